"""Inputs real users type by mistake, one row each: the command is refused with exit code 2 and one line
`error: ...` naming what and where, before Ray starts, and nothing in the working tree changes (inputs, a sibling
directory, another run and the earlier outputs are hashed before and after).

Serving's bad requests (a lone surrogate among concurrent requests, a failing batch) are in tests/test_serve*.py;
tampered checkpoints in tests/test_checkpoint_integrity.py; a config error raised inside a Ray worker in
`test_a_worker_side_user_error_is_not_retried` below.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from jobs import embed, prepare_data, train
from jobs.cli import run_command
from mtl.errors import UserError
from tests.conftest import config_dict, synthetic_rows, write_parquet

JOBS = {"embed": embed.main, "train": train.main, "prepare_data": prepare_data.main}

# (id, job, arguments, fragment the one-line message must contain). Paths are relative to the work directory;
# {export} is the tiny export.
CASES = [
    # jobs.embed: outputs that would replace inputs or more
    ("embed-output-is-input-dir", "embed", "--input data/in/*.parquet --output data/in --overwrite", "holds input"),
    ("embed-output-is-parent", "embed", "--input data/in/*.parquet --output data --overwrite", "holds input"),
    ("embed-output-is-cwd", "embed", "--input data/in/*.parquet --output . --overwrite", "holds input"),
    ("embed-output-is-export", "embed", "--input data/in/*.parquet --output {export} --overwrite", "holds --model"),
    ("embed-overwrite-foreign-dir", "embed", "--input data/in/*.parquet --output sibling --overwrite",
     "not written by jobs.embed"),
    ("embed-output-exists", "embed", "--input data/in/*.parquet --output sibling", "pass --overwrite"),
    # jobs.embed: inputs and export
    ("embed-glob-typo", "embed", "--input data/ni/*.parquet --output out", "matches no file"),
    ("embed-missing-column", "embed", "--input data/in/*.parquet --text-column sentence --output out",
     "no column(s) ['sentence']"),
    ("embed-csv-input", "embed", "--input data/table.csv --output out", "table.csv: not a readable Parquet file"),
    ("embed-invalid-utf8", "embed", "--input data/bad_utf8.parquet --output out",
     "row 2, column 'text': not valid UTF-8"),
    ("embed-corrupt-manifest", "embed", "--model broken_export --input data/in/*.parquet --output out",
     "broken_export/mtl.json: not valid JSON"),
    ("embed-unknown-task", "embed", "--input data/in/*.parquet --output out --tasks spam", "--tasks: unknown task"),
    # jobs.train: run names that escape the storage directory
    ("train-run-name-parent", "train", "--set run.name=../sibling --set run.if_exists=fresh",
     "run.name: '../sibling' is not a plain directory name"),
    ("train-run-name-empty", "train", "--set run.name= --set run.if_exists=fresh", "run.name: '' is not a plain"),
    ("train-run-name-absolute", "train", "--set run.name=/tmp/x", "run.name: '/tmp/x' is not a plain"),
    ("train-run-name-dot", "train", "--set run.name=. --set run.if_exists=fresh", "run.name: '.' is not a plain"),
    # jobs.train: config values that cannot work
    ("train-inf-lr", "train", "--set optim.head_lr=.inf", "optim.head_lr: Input should be a finite number"),
    ("train-nan-lr", "train", "--set optim.backbone_lr=.nan", "optim.backbone_lr: Input should be a finite"),
    ("train-steps-and-epochs", "train", "--set train.epochs=1", "add --set train.epochs=null"),
    ("train-partial-too-deep", "train", "--set finetune.strategy=partial --set finetune.unfreeze_last_n_layers=5",
     "finetune.unfreeze_last_n_layers=5: the backbone"),
    ("train-lora-unknown-module", "train", "--set finetune.strategy=lora --set finetune.lora.target_modules=[qkv]",
     "finetune.lora.target_modules: ['qkv'] not in the backbone"),
    ("train-backbone-missing", "train", "--set model.backbone=./no/such/model", "model.backbone='./no/such/model'"),
    # jobs.train: data
    ("train-glob-typo", "train", "--set data.train=data/trian-*.parquet", "data.train: 'data/trian-*.parquet' matches"),
    ("train-missing-column", "train", "--set data.train=data/no_label.parquet", "missing column 'label'"),
    ("train-invalid-utf8", "train", "--set data.train=data/bad_utf8_rows.parquet",
     "row 2, column 'text': not valid UTF-8"),
    ("train-task-without-rows", "train", "--set data.train=data/sentiment_only.parquet",
     "no rows for task(s) ['topic']"),
    ("train-validation-not-parquet", "train", "--set data.validation=data/table.csv", "not a readable Parquet file"),
    ("train-source-column-missing", "train",
     "--set 'data.sources=[{{path: data/in/part-0.parquet, task: topic, columns: {{text: sentence1}}}}]'",
     "part-0.parquet has no column 'sentence1' (columns are ['id', 'text'])"),
    ("train-source-unknown-task", "train", "--set 'data.sources=[{{path: data/in/part-0.parquet, task: nli}}]'",
     "data.sources names unknown task(s) ['nli']"),
    ("train-similarity-without-range", "train", "--set 'tasks.sts={{type: similarity}}' --set finetune.strategy=full",
     "tasks.sts: a similarity task needs score_range"),
    # jobs.prepare_data
    ("prepare-pair-column", "prepare_data", "--task topic=data/pairs.tsv --output prepared",
     "pairs.tsv: column(s) ['text_pair'] hold a second text"),
    ("prepare-header-only", "prepare_data", "--task topic=data/header.tsv --output prepared", "header.tsv: no rows"),
    ("prepare-ragged-line", "prepare_data", "--task topic=data/ragged.tsv --output prepared",
     "ragged.tsv: not a TSV"),
    ("prepare-negative-fraction", "prepare_data",
     "--task topic=data/good.tsv --output prepared --validation-fraction -0.1", "--validation-fraction -0.1"),
    ("prepare-zero-shard-rows", "prepare_data", "--task topic=data/good.tsv --output prepared --shard-rows 0",
     "--shard-rows 0"),
    ("prepare-bad-task-flag", "prepare_data", "--task topic --output prepared", "--task 'topic': expected task=value"),
]  # fmt: skip


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` -> sha256 of its bytes (symlinks by target)."""
    digest = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            digest[str(path.relative_to(root))] = "-> " + os.readlink(path)
        elif path.is_file():
            digest[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def invalid_utf8_table(columns: dict[str, list]) -> pa.Table:
    """A table whose `text` column holds the bytes given (one of them not UTF-8), typed as string."""
    raw = pa.array(columns.pop("text"), pa.binary())
    return pa.table({"text": raw.view(pa.string()), **columns})


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_backbone, tiny_export) -> Path:
    """A working directory as a user has it: data, a config, an export copy with a broken manifest, a sibling
    directory and another run that must survive every refused command."""
    root = tmp_path_factory.mktemp("bad-inputs")
    work = root / "work"
    raw = config_dict(tiny_backbone, work)  # writes data/train.parquet and data/validation.parquet
    raw["data"] = {"train": ["data/train.parquet"], "validation": ["data/validation.parquet"]}
    raw["run"] = {"name": "mine", "storage_path": "runs"}
    (work / "config.yaml").write_text(yaml.safe_dump(raw))
    write_parquet(work / "data" / "in" / "part-0.parquet", {"id": [0, 1, 2], "text": ["a b", "c d", "e f"]})
    (work / "data" / "table.csv").write_text("text\nhello\n")
    pq.write_table(invalid_utf8_table({"text": [b"fine", b"ok", b"\xff\xfe bad"]}), work / "data" / "bad_utf8.parquet")
    rows = synthetic_rows(40)
    pq.write_table(
        invalid_utf8_table({"text": [b"fine", b"ok", b"\xff bad", *[t.encode() for t in rows["text"][3:]]],
                            "task": rows["task"], "label": rows["label"]}),
        work / "data" / "bad_utf8_rows.parquet",
    )  # fmt: skip
    write_parquet(work / "data" / "no_label.parquet", {"text": ["a"], "task": ["topic"]})
    sentiment = {"text": ["great film", "awful film"] * 20, "task": ["sentiment"] * 40, "label": [1, 0] * 20}
    write_parquet(work / "data" / "sentiment_only.parquet", sentiment)
    (work / "data" / "pairs.tsv").write_text("text\ttext_pair\tlabel\nwho ?\twho is it ?\tHUM\n")
    (work / "data" / "header.tsv").write_text("sentence\tlabel\n")
    (work / "data" / "ragged.tsv").write_text("sentence\tlabel\nfine\tHUM\ntoo\tmany\tcolumns\n")
    (work / "data" / "good.tsv").write_text("sentence\tlabel\nwho ?\tHUM\nwhere ?\tLOC\n")
    shutil.copytree(tiny_export, work / "broken_export")
    (work / "broken_export" / "mtl.json").write_text("{not json")
    (work / "sibling").mkdir()
    (work / "sibling" / "keep.txt").write_text("a sibling directory nothing may move")
    (work / "runs" / "other").mkdir(parents=True)
    (work / "runs" / "other" / "keep.txt").write_text("another run inside the storage root")
    return work


@pytest.mark.parametrize(("job", "arguments", "fragment"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line_and_nothing_changes(job, arguments, fragment, work, tiny_export, capsys,
                                                              monkeypatch):  # fmt: skip
    import ray

    monkeypatch.chdir(work)
    argv = shlex.split(arguments.format(export=tiny_export))
    if job == "embed" and "--model" not in argv:
        argv = ["--model", str(tiny_export), *argv]
    if job == "train":
        argv = ["--config", "config.yaml", *argv]
    before = tree_digest(work), tree_digest(tiny_export)
    with pytest.raises(SystemExit) as exited:
        run_command(JOBS[job], argv)
    stderr = capsys.readouterr().err.strip()
    assert exited.value.code == 2, stderr
    assert fragment in stderr, stderr
    assert "Traceback" not in stderr
    assert stderr.startswith("error: ") and len(stderr.splitlines()) == 1, stderr
    assert (tree_digest(work), tree_digest(tiny_export)) == before  # nothing moved, written or deleted
    assert not ray.is_initialized()


def test_prepare_data_deletes_only_plain_names_its_record_lists(work, monkeypatch):
    """A `_prepared_files.json` listing paths outside its directory (hand-edited, or planted) deletes nothing there."""
    monkeypatch.chdir(work)
    target = work / "prepared-planted"
    target.mkdir()
    (target / "_prepared_files.json").write_text(json.dumps(["../sibling/keep.txt", str(work / "config.yaml")]))
    before = tree_digest(work / "sibling"), (work / "config.yaml").read_bytes()
    prepare_data.main(["--task", "topic=data/good.tsv", "--output", str(target), "--validation-fraction", "0"])
    assert (tree_digest(work / "sibling"), (work / "config.yaml").read_bytes()) == before
    assert sorted(p.name for p in target.iterdir()) == ["_prepared_files.json", "labels.json", "train-00000.parquet"]


@pytest.mark.parametrize(
    ("job", "arguments", "fragment"),
    [
        ("embed", ["--input", "data/ni/*.parquet", "--output", "out"], "matches no file"),
        ("train", ["--config", "config.yaml", "--set", "data.train=data/no_label.parquet"], "missing column 'label'"),
    ],
    ids=["embed-glob-typo", "train-missing-column"],
)
def test_a_fresh_process_refuses_before_ray_starts(job, arguments, fragment, work, tiny_export, tmp_path):
    """As a user runs it: a new interpreter, exit 2, one line, no Ray session directory ever created."""
    if job == "embed":
        arguments = ["--model", str(tiny_export), *arguments]
    ray_tmp = tmp_path / "ray-tmp"
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", f"jobs.{job}", *arguments], cwd=work, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    print(f"jobs.{job} refused in {seconds:.1f} s")  # recorded, not asserted (the machine's speed varies)
    assert completed.returncode == 2, completed.stderr[-3000:]
    lines = completed.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and fragment in lines[-1], completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    assert not ray_tmp.exists()  # Ray never started: no session directory


def test_debug_shows_the_traceback(work, tiny_export, monkeypatch):
    monkeypatch.chdir(work)
    with pytest.raises(UserError, match="holds input"):
        run_command(embed.main, ["--model", str(tiny_export), "--input", "data/in/*.parquet", "--output", ".",
                                 "--debug"])  # fmt: skip


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_worker_side_user_error_is_not_retried(tiny_backbone, tmp_path):
    """Weights that cannot be read pass the driver's pre-flight (it reads config.json only) and fail in the worker:
    with run.max_failures=2 the worker runs once, the retry stops at once, and the job prints the worker's error
    as one line with exit code 2."""
    backbone = tmp_path / "broken-backbone"
    shutil.copytree(tiny_backbone, backbone)
    weights = backbone / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    raw = config_dict(backbone, tmp_path)
    raw["run"]["max_failures"] = 2
    raw["scaling"] = {"num_workers": 1, "cpus_per_worker": 1}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    completed = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--config", str(path)], capture_output=True, text=True, timeout=400,
        env=env,
    )  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output[-5000:]
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model.backbone: cannot load the encoder's weights"), last
    assert "not retried" in last
    assert len(re.findall(r"worker rank 0/1 on node", output)) == 1, output[-5000:]  # the retry never trained


def test_an_export_whose_task_name_is_a_path_is_refused(tiny_export, tmp_path):
    """`mtl.json` is read from shared storage: a task name like `../x` would name a head file outside the export."""
    from mtl.export_format import ExportError, read_manifest

    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    manifest = json.loads((export / "mtl.json").read_text())
    manifest["tasks"]["../../outside"] = manifest["tasks"].pop("topic")
    (export / "mtl.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match=r"mtl.json: task name\(s\) \['../../outside'\] are not plain names"):
        read_manifest(export)
