"""Ray Datasets for training: streaming `read_parquet`, the same row validation, the task mix.

The driver first streams every file once with pyarrow (`mtl.data.iter_validated`): bad rows stop the
run with file, row and column before any worker starts (or are counted under `skip`), and the per-task
row counts needed for sampling come out of the same pass. Ray Data then streams the files again for
training and applies the same `validate_batch` in skip mode, so a row the pre-flight dropped is dropped
there too.
"""

from __future__ import annotations

import functools
import json
import zlib

import numpy as np
import pyarrow as pa
import ray.data

from mtl.config import Config, validate_config
from mtl.data.contract import RowReport, expand_paths, iter_validated, validate_batch
from mtl.data.sampling import rows_per_task, task_weights


def validate_files(patterns: list[str], config: Config, key: str) -> tuple[list[str], RowReport, dict[str, int]]:
    """Validate every row once (constant memory); return files, row report and clean rows per task."""
    files = expand_paths(patterns, key)
    report = RowReport()
    counts = dict.fromkeys(config.task_names, 0)
    for clean, batch_report in iter_validated(files, config):
        report.add(batch_report)
        task_ids = clean.column("task_id").to_numpy()
        for index, name in enumerate(config.task_names):
            counts[name] += int((task_ids == index).sum())
    return files, report, counts


# Small CPU slices so read and map tasks fit beside the training workers on a small machine.
DATA_TASK_CPUS = 0.25


@functools.lru_cache(maxsize=4)
def _skip_config(config_json: str) -> Config:
    """Validated once per worker process, not once per batch."""
    config_data = json.loads(config_json)
    skip = {**config_data, "data": {**config_data["data"], "on_bad_rows": "skip"}}
    return validate_config(skip, source="dataset config")


def clean_rows(batch: pa.Table, config_json: str, factors: list[float] | None = None) -> pa.Table:
    """Ray Data map: contract rows -> `text`, `task_id`, `label`, dropping what the pre-flight counted.

    With `factors`, task t's rows are resampled by factors[t] (whole copies plus a seeded random
    fraction), which mixes tasks in the same streaming pass instead of re-reading the files per task.
    """
    config = _skip_config(config_json)
    label_type = batch.schema.field(config.data.label_column).type
    label_kind = "integer" if pa.types.is_integer(label_type) else "string"
    clean, _ = validate_batch(batch, "ray-data", 0, config, label_kind)
    if factors is None or clean.num_rows == 0:
        return clean
    task_ids = clean.column("task_id").to_numpy()
    factor = np.asarray(factors)[task_ids]  # (N,)
    seed = config.train.seed + zlib.crc32(clean.column("text")[0].as_py().encode())
    extra = np.random.default_rng(seed).random(len(task_ids)) < (factor - np.floor(factor))
    copies = np.floor(factor).astype(np.int64) + extra
    return clean.take(np.repeat(np.arange(len(task_ids)), copies))


def read_rows(files: list[str], config: Config, factors: list[float] | None = None) -> ray.data.Dataset:
    columns = [config.data.text_column, config.data.task_column, config.data.label_column]
    return ray.data.read_parquet(files, columns=columns, num_cpus=DATA_TASK_CPUS).map_batches(
        clean_rows,
        fn_kwargs={"config_json": config.model_dump_json(), "factors": factors},
        batch_format="pyarrow",
        num_cpus=DATA_TASK_CPUS,
    )


def training_dataset(files: list[str], config: Config, counts: dict[str, int]) -> tuple[ray.data.Dataset, int]:
    """One epoch of the configured task mix; returns the dataset and its expected row count."""
    weights = task_weights(counts, config.data.sampling, config.data.temperature)
    targets = rows_per_task(counts, weights)
    if config.data.sampling == "proportional":
        return read_rows(files, config), sum(counts.values())
    factors = [targets[name] / counts[name] if counts[name] else 0.0 for name in config.task_names]
    return read_rows(files, config, factors), int(sum(targets.values()))
