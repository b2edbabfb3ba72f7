"""The peer tools a user would install instead (Infinity, sentence-transformers' CPU recipes with ONNX Runtime), in
their own virtual environment, built by the benches on first use and cached.

Their pins clash with the project's (Infinity needs sentence-transformers < 4 and numpy < 2), so they never enter
`.venv`: `anchor_python()` builds `~/.cache/mtl-bench-envs/anchors-<hash of the requirements>/` once (about two
minutes from the package index, ~1.8 GB), and the benches run the anchor scripts (`jobs/bench/anchor_*.py`, which
import nothing from this project) with its interpreter. `make test` never builds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# What installed and ran here (../shared/ANCHORS.md), pinned to the versions that resolved on 2026-12-02.
REQUIREMENTS = (
    "infinity-emb[server,torch]==0.0.78",
    "torch==2.13.0",
    "sentence-transformers==3.4.1",
    "transformers==4.57.6",
    "optimum[onnxruntime]==2.1.0",
    "optimum-onnx==0.1.0",
    "onnxruntime==1.32.0",
    "datasets==3.6.0",
    "accelerate==1.4.0",
    "numpy==1.26.4",
    "pandas==2.2.3",
    "pyarrow==18.1.0",
    "aiohttp==3.14.5",
)
ENV_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mtl-bench-envs"
SCRIPTS = Path(__file__).parent


def anchor_env(requirements: tuple[str, ...] = REQUIREMENTS) -> Path:
    """The anchors' virtual environment, built on first use; a half-built one (no `.complete`) is rebuilt."""
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
    directory = ENV_ROOT / f"anchors-{digest}"
    if (directory / ".complete").is_file():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    print(f"building the anchors' environment {directory} (once; ~2 min): {' '.join(requirements)}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True)
    pip = [str(directory / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    completed = subprocess.run([*pip, *requirements], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"pip could not build {directory}:\n{completed.stderr[-3000:]}")
    frozen = subprocess.run([str(directory / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True)
    (directory / ".complete").write_text(frozen.stdout)
    return directory


def anchor_python() -> Path:
    return anchor_env() / "bin" / "python"


def anchor_versions() -> dict[str, str]:
    """name -> version of the anchors' environment's packages (from its `pip freeze`)."""
    lines = (anchor_env() / ".complete").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line)


def run_script(script: str, request: dict, python: Path | None = None, timeout: float = 3600) -> dict:
    """Run `jobs/bench/<script>` with the anchors' interpreter (or `python`); its last stdout line is its JSON result.
    The request goes in as one JSON argument; stderr streams through (progress)."""
    python = python or anchor_python()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    completed = subprocess.run(
        [str(python), str(SCRIPTS / script), json.dumps(request)],
        stdout=subprocess.PIPE, text=True, env=env, timeout=timeout,
    )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"{script} ({python}) exited {completed.returncode}:\n{completed.stdout[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
