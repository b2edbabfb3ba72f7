"""The package installs: its dependencies are declared, its presets are found by name, and a built wheel installed
into a throwaway environment (not the checkout) ships the configs and runs every console script.

The slow test builds the wheel from a copy of the sources (no network, the installed build backend), installs it
with `--no-deps` into a venv under tmp_path that borrows the project venv's site-packages through a `.pth` line (no
download), and runs everything from an empty directory so that only the installed copy can be imported.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from jobs import cli
from jobs.presets import PRESETS_DIR, resolve_config, shipped_presets
from mtl.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = ["mtl", "jobs", "serve_app"]
SCRIPTS = PYPROJECT["project"]["scripts"]
SHIPPED = sorted(path.name for path in (ROOT / "jobs" / "configs").glob("*.yaml"))


def distribution_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module name -> the files that import it, over mtl/, jobs/ and serve_app/."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for file in (ROOT / package).rglob("*.py"):
            if file.match("jobs/bench/anchor_*.py"):  # peers' scripts, run by the anchors' own environment
                continue
            for node in ast.walk(ast.parse(file.read_text(), str(file))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in PACKAGES and top != "__future__":
                        found.setdefault(top, set()).add(file.relative_to(ROOT).as_posix())
    return found


# Optional features whose imports are declared by an extra (and refused with `pip install '.[extra]'` without it).
OPTIONAL_EXTRAS = ("mlflow",)


def test_every_third_party_import_is_a_declared_dependency():
    extras = PYPROJECT["project"]["optional-dependencies"]
    requirements = PYPROJECT["project"]["dependencies"] + [r for name in OPTIONAL_EXTRAS for r in extras[name]]
    declared = {distribution_name(re.match(r"[A-Za-z0-9._-]+", requirement).group()) for requirement in requirements}
    providers = packages_distributions()
    missing = []
    for module, files in sorted(third_party_imports().items()):
        distributions = {distribution_name(name) for name in providers.get(module, [])}
        assert distributions, f"{module} (imported by {sorted(files)}) is not installed: which distribution is it?"
        if not distributions & declared:
            missing.append(f"{module} ({'/'.join(sorted(distributions))}, imported by {sorted(files)[0]})")
    assert not missing, f"imported but not in [project.dependencies] or {OPTIONAL_EXTRAS}: {missing}"


@pytest.mark.parametrize("file_name", SHIPPED)
def test_a_shipped_preset_is_found_by_name(file_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no jobs/configs/ here: only the package's own copy can answer
    name = file_name.removesuffix(".yaml")
    assert resolve_config(name) == resolve_config(file_name) == PRESETS_DIR / file_name
    assert load_config(resolve_config(name)).tasks


def test_a_path_wins_over_a_preset_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "production").write_text("tasks: {}\n")
    assert resolve_config("production") == Path("production")
    assert resolve_config(ROOT / "jobs/configs/poc.yaml") == ROOT / "jobs/configs/poc.yaml"


@pytest.mark.parametrize("value", ["no_such_preset", "configs/production.yaml", "missing/poc"])
def test_an_unknown_config_lists_the_shipped_presets(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(f"--config {value}: no such file")) as raised:
        resolve_config(value)
    assert ", ".join(shipped_presets()) in str(raised.value)
    assert shipped_presets() == [name.removesuffix(".yaml") for name in SHIPPED]


def test_each_console_script_is_a_function_of_jobs_cli_named_for_its_job():
    for script, target in SCRIPTS.items():
        function = script.removeprefix("mtl-").replace("-", "_")
        assert target == f"jobs.cli:{function}", (script, target)
        assert callable(getattr(cli, function, None)), target
    assert {"mtl-train", "mtl-embed", "mtl-prepare-data", "mtl-evaluate", "mtl-serve"} <= set(SCRIPTS)


# ------------------------------------------------------------------------------------------ the installed wheel


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """No PYTHONPATH to the checkout; caches and bytecode kept out of everything outside tmp_path."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    return env | {
        "PYTHONDONTWRITEBYTECODE": "1",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "MPLCONFIGDIR": str(tmp_path / "cache" / "matplotlib"),
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Wheel built from a copy of the sources, installed (not editable) into a throwaway venv."""
    tmp_path = tmp_path_factory.mktemp("packaging")
    env = isolated_env(tmp_path)
    source = tmp_path / "source"  # the build writes build/ and *.egg-info next to the sources: not into the checkout
    source.mkdir()
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "."]
    built = run([*command, "--wheel-dir", str(tmp_path)], source, env)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("mtl-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    where = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
    site = Path(where.stdout.strip())
    # A plain path line, not site.addsitedir: the project venv's own .pth files (its editable install of this
    # checkout) are not run, so the checkout stays off sys.path.
    borrowed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_project_venv.pth").write_text("\n".join(sorted(borrowed)) + "\n")
    # The venv's own interpreter runs pip (borrowed), so the scripts' shebangs point at it; --ignore-installed: the
    # project venv's editable `mtl` is neither taken as already there nor uninstalled.
    command = [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", str(wheel)]
    done = run(command, tmp_path, env)
    assert done.returncode == 0, done.stdout + done.stderr
    work = tmp_path / "work"  # an empty current directory: nothing importable, no jobs/configs/
    work.mkdir()
    return {"wheel": wheel, "venv": venv, "site": site, "work": work, "env": env}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_ships_the_presets_the_serve_config_and_the_scripts(installed):
    with zipfile.ZipFile(installed["wheel"]) as wheel:
        names = set(wheel.namelist())
        entry_points = wheel.read("mtl-0.1.0.dist-info/entry_points.txt").decode()
    assert {f"jobs/configs/{name}" for name in SHIPPED} <= names
    assert "serve_app/serve_config.yaml" in names
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in entry_points
        assert f"{installed['venv']}/bin/python" in (installed["venv"] / "bin" / script).read_text()[:400], script


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_installed_package_loads_every_preset_by_name(installed):
    probe = """
import json, jobs, mtl, serve_app
from jobs.presets import resolve_config, shipped_presets
from mtl.config import load_config
presets = {name: str(resolve_config(name)) for name in shipped_presets()}
tasks = {name: list(load_config(path).tasks) for name, path in presets.items()}
print(json.dumps({"modules": [mtl.__file__, jobs.__file__, serve_app.__file__], "presets": presets, "tasks": tasks}))
"""
    python = str(installed["venv"] / "bin" / "python")
    done = run([python, "-c", probe], installed["work"], installed["env"])
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    site = str(installed["site"])
    assert all(path.startswith(site) for path in found["modules"]), (found["modules"], "the checkout was imported")
    assert sorted(found["presets"]) == [name.removesuffix(".yaml") for name in SHIPPED]
    assert all(path.startswith(site) for path in found["presets"].values())
    assert all(found["tasks"].values())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_console_script_runs_from_anywhere(installed):
    bin_dir, work, env = installed["venv"] / "bin", installed["work"], installed["env"]
    # Started together: each one is mostly the import of torch and friends.
    running = {
        script: subprocess.Popen(
            [str(bin_dir / script), "--help"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for script in SCRIPTS
    }
    for script, process in running.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, (script, err.decode()[-2000:])
        assert out.decode().startswith(f"usage: {script} "), (script, out.decode()[:200])

    unknown = run([str(bin_dir / "mtl-train"), "--config", "no_such_preset"], work, env)
    assert unknown.returncode == 2, unknown.stderr
    assert unknown.stderr.startswith("error: --config no_such_preset: no such file")
    assert ", ".join(name.removesuffix(".yaml") for name in SHIPPED) in unknown.stderr

    # By name through a job's own flag; stopped by the job's task check, before any data is read.
    command = [str(bin_dir / "mtl-prepare-data"), "--config", "poc", "--task", "x=x.tsv", "--output", "out"]
    by_name = run(command, work, env)
    assert by_name.returncode == 2 and "--task ['x']: not in poc (tasks: [" in by_name.stderr, by_name.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mtl_serve_runs_the_shipped_serve_config(installed):
    """`serve run` is replaced by a recorder: the arguments and settings it would start Ray with, no Ray."""
    export = installed["work"] / "export"
    export.mkdir(exist_ok=True)
    (export / "mtl.json").write_text("{}")
    probe = """
import json, os
from ray.serve import scripts
calls = []
scripts.cli.main = lambda args, prog_name: calls.append(args)
from jobs.cli import serve_main
serve_main(["--model", "export", "--address", "auto"])
keys = ["MTL_MODEL_DIR", "RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY"]
print(json.dumps({"args": calls[0], "env": {key: os.environ.get(key) for key in keys}}))
"""
    python = str(installed["venv"] / "bin" / "python")
    done = run([python, "-c", probe], installed["work"], installed["env"])
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["args"] == ["run", str(installed["site"] / "serve_app" / "serve_config.yaml"), "--address", "auto"]
    assert found["env"] == {
        "MTL_MODEL_DIR": str(export),
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
    }
