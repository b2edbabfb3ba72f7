"""What a run directory was started with, so a resume continues the same run or is refused.

`<run_dir>/run.json` records the resolved config and a fingerprint of the training data (each file's path, size and
row count) when a run starts. Starting again under the same `run.name` compares both: a difference (labels listed in
another order, another learning rate, a changed data file) is refused with the keys and files that changed, since
resuming would mix two runs in one checkpoint. `run.if_exists: fresh` sets the old directory aside instead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq

from mtl.config import Config, ConfigError

RECORD = "run.json"
# Settings a resumed run may change: how long it runs on, how often it logs, validates and keeps checkpoints, how
# it reacts to failures, and CPU speed switches that leave what a step computes as it was (the workers' allocator;
# where dropout masks are drawn from: the same keep rate and scaling; how a batch is cut into length chunks: the same
# rows, losses and gradients). Also what lets a run recorded before those keys existed resume.
MAY_CHANGE = {
    "run.max_failures", "run.keep_checkpoints", "run.if_exists", "train.max_steps", "train.log_every",
    "train.eval_every", "train.checkpoint_every", "train.profile_phases", "train.log_rows",
    "tracking.backends", "tracking.mlflow_uri", "tracking.experiment", "scaling.allocator", "train.fast_dropout",
    "train.length_chunks", "train.chunk_cost_tokens",
}  # fmt: skip


def data_fingerprint(files: list[str]) -> list[dict]:
    return [
        {"path": str(Path(path).resolve()), "bytes": Path(path).stat().st_size, "rows": pq.read_metadata(path).num_rows}
        for path in files
    ]


def flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {key: item for name, sub in value.items() for key, item in flat(sub, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): value}


def differences(recorded: dict, current: dict) -> list[str]:
    """`key: old -> new` for every setting that differs (settings in MAY_CHANGE excepted)."""
    old, new = flat(recorded["config"]), flat(current["config"])
    changed = [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and key not in MAY_CHANGE
    ]
    before = {entry["path"]: entry for entry in recorded["data"]}
    after = {entry["path"]: entry for entry in current["data"]}
    for path in sorted(before.keys() | after.keys()):
        if path not in after:
            changed.append(f"data file removed: {path}")
        elif path not in before:
            changed.append(f"data file added: {path}")
        elif before[path] != after[path]:
            changed.append(f"data file changed: {path} ({before[path]['rows']} -> {after[path]['rows']} rows, "
                           f"{before[path]['bytes']} -> {after[path]['bytes']} bytes)")  # fmt: skip
    return changed


def check_or_record(run_dir: str | Path, config: Config, files: list[str]) -> None:
    """Record a new run; for an existing one, refuse a different config or data (or set it aside if configured)."""
    if "://" in str(run_dir):
        print(f"run.storage_path is remote ({run_dir}): the resume check covers local and mounted storage only")
        return
    run_dir = Path(run_dir)
    current = {"config": config.model_dump(mode="json"), "data": data_fingerprint(files)}
    record = run_dir / RECORD
    if run_dir.exists() and any(run_dir.iterdir()):
        if config.run.if_exists == "fresh":
            aside = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            run_dir.rename(aside)
            print(f"run.if_exists=fresh: the earlier {run_dir} is now {aside}", flush=True)
        elif record.is_file():
            changed = differences(json.loads(record.read_text()), current)
            if changed:
                raise ConfigError(
                    f"run.name={config.run.name!r}: {run_dir} holds a run started with other settings or data; "
                    "resuming it would mix two runs. Changed:\n  " + "\n  ".join(changed) + "\n"
                    "Use another run.name, or run.if_exists=fresh to set the old run aside."
                )
            return
    run_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(current, indent=2))
