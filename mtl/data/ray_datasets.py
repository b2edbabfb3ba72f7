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
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray.data

from mtl.config import Config, validate_config
from mtl.data.contract import (
    ROW_HASH,
    RowReport,
    check_schema,
    iter_validated,
    normalise,
    part_mask,
    read_schema,
    source_columns,
    sources_by_file,
    validate_batch,
)
from mtl.data.sampling import draw_counts, draw_ids, draw_rates, row_weights
from mtl.data.stream_position import is_in


def validate_files(
    files: list[str], config: Config, key: str
) -> tuple[list[str], RowReport, dict[str, int], dict[str, float]]:
    """Validate every row of a split's files (`mtl.data.contract.split_files`) once (constant memory); return the
    files, row report, clean rows per task and the sum of their draw weights per task
    (`mtl.data.sampling.row_weights`)."""
    report = RowReport()
    counts = dict.fromkeys(config.task_names, 0)
    weight_sums = dict.fromkeys(config.task_names, 0.0)
    split = "validation" if key == "data.validation" else "train"
    for clean, batch_report in iter_validated(files, config, split=split):
        report.add(batch_report)
        task_ids = clean.column("task_id").to_numpy()
        weights = row_weights(clean.column("text"), config.data)
        for index, name in enumerate(config.task_names):
            counts[name] += int((task_ids == index).sum())
            weight_sums[name] += float(weights[task_ids == index].sum())
    return files, report, counts, weight_sums


# Small CPU slices so read and map tasks fit beside the training workers on a small machine.
DATA_TASK_CPUS = 0.25


@functools.lru_cache(maxsize=4)
def _skip_config(config_json: str) -> Config:
    """Validated once per worker process, not once per batch."""
    config_data = json.loads(config_json)
    skip = {**config_data, "data": {**config_data["data"], "on_bad_rows": "skip"}}
    return validate_config(skip, source="dataset config")


def clean_rows(
    batch: pa.Table,
    config_json: str,
    rates: list[float] | None = None,
    source_index: int | None = None,
    split: str = "train",
) -> pa.Table:
    """Ray Data map: contract rows -> clean rows (`mtl.data.contract.CLEAN_SCHEMA`), dropping what the pre-flight
    counted; rows of `data.sources[source_index]` are renamed to the contract and give their `split` part.

    With `rates`, a row of task t is drawn rates[t] x its `row_weights` times (`draw_counts`: whole copies plus a
    random fraction, drawn afresh every epoch), which mixes tasks in the same streaming pass instead of re-reading
    the files per task.
    """
    config = _skip_config(config_json)
    source = None if source_index is None else config.data.sources[source_index]
    table = batch if source is None else normalise(batch, source, config.data)
    kinds = check_schema(table.schema, "ray-data", config.data)
    select = part_mask(table, source, split, config.data)
    clean, _ = validate_batch(table, "ray-data", 0, config, kinds, select)
    return clean if rates is None else resample_rows(clean, config_json, rates)


def resample_rows(clean: pa.Table, config_json: str, rates: list[float]) -> pa.Table:
    """Ray Data map: each clean row drawn rates[task] x its `row_weights` times (see `clean_rows`)."""
    if clean.num_rows == 0:
        return clean
    config = _skip_config(config_json)
    expected = np.asarray(rates)[clean.column("task_id").to_numpy()] * row_weights(clean.column("text"), config.data)
    # Fresh draws every time Ray Data runs the map (every epoch): a seed derived from the block would leave out the
    # same rows in every epoch. (Ray Data's streaming order is not reproducible run to run anyway.)
    copies = draw_counts(expected, np.random.default_rng())
    drawn = clean.take(np.repeat(np.arange(clean.num_rows), copies))
    if "row_id" not in drawn.column_names:
        return drawn
    ids = draw_ids(clean.column("row_id").to_numpy(), copies)  # each copy its own id
    return drawn.set_column(drawn.schema.get_field_index("row_id"), "row_id", pa.array(ids, type=pa.uint64()))


def read_rows(
    files: list[str], config: Config, rates: list[float] | None = None, row_ids: bool = False, split: str = "train"
) -> ray.data.Dataset:
    """Clean rows (`clean_rows`) of a split's files; with `row_ids`, each carries a `row_id` (file path + position:
    the same on every read), which is how a resumed run leaves out what it already trained
    (`mtl.data.stream_position`). Files are read in groups of one source and one column set (a union of reads)."""
    sources = sources_by_file(config) if config.data.sources else {}
    indices = {id(source): index for index, source in enumerate(config.data.sources)}
    groups: dict[tuple, list[str]] = {}
    for path in files:
        source = sources.get(str(Path(path).resolve()))
        columns = tuple(source_columns(source, config.data, read_schema(path, f"data.{split}")))
        groups.setdefault((None if source is None else indices[id(source)], columns), []).append(path)
    datasets = []
    for (source_index, columns), group in groups.items():
        dataset = ray.data.read_parquet(group, include_row_hash=row_ids, num_cpus=DATA_TASK_CPUS)
        # Pushed into the Parquet read by Ray Data's optimizer (checked with `Dataset.explain()`: no Project left).
        dataset = dataset.select_columns(list(columns) + ([ROW_HASH] if row_ids else []))
        datasets.append(
            dataset.map_batches(
                clean_rows,
                fn_kwargs={
                    "config_json": config.model_dump_json(),
                    "rates": rates,
                    "source_index": source_index,
                    "split": split,
                },  # fmt: skip
                batch_format="pyarrow",
                num_cpus=DATA_TASK_CPUS,
            )
        )
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


@functools.lru_cache(maxsize=2)
def _trained_ids(path: str, stamp: tuple) -> np.ndarray:
    return np.load(path)


def drop_trained(batch: pa.Table, resume_file: str) -> pa.Table:
    """Ray Data map of `train_rest`: leaves out the rows a resumed run trained in its epoch before the checkpoint.

    The ids are read from `resume_file` when the pass runs (rank 0 writes it on resume, after the dataset was built).
    """
    stat = os.stat(resume_file)
    trained = _trained_ids(resume_file, (stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return batch.filter(pa.array(~is_in(batch.column("row_id").to_numpy(), trained)))


def training_dataset(
    files: list[str],
    config: Config,
    counts: dict[str, int],
    weight_sums: dict[str, float],
    resume_file: str,
    teacher_files: list[str] | None = None,
) -> tuple[ray.data.Dataset, ray.data.Dataset, int]:
    """One epoch of the configured task mix (and long-text weighting); returns the dataset, the same without the rows
    listed in `resume_file` (`drop_trained`: the rest of the epoch a run resumes in) and the epoch's expected rows.

    `teacher_files` (`mtl.train.teacher_embeddings`): the same clean rows with a `teacher` column, read instead.
    """
    dataset, epoch_rows = _epoch(files, config, counts, weight_sums, teacher_files)
    rest = dataset.map_batches(
        drop_trained, fn_kwargs={"resume_file": resume_file}, batch_format="pyarrow", num_cpus=DATA_TASK_CPUS
    )
    return dataset, rest, epoch_rows


def _epoch(
    files: list[str],
    config: Config,
    counts: dict[str, int],
    weight_sums: dict[str, float],
    teacher_files: list[str] | None,
) -> tuple[ray.data.Dataset, int]:
    rates, epoch_rows = draw_rates(counts, weight_sums, config.data)
    every_row_once = config.data.sampling == "proportional" and config.data.long_text_words is None
    task_rates = None if every_row_once else [rates[name] for name in config.task_names]
    if teacher_files is None:
        dataset = read_rows(files, config, task_rates, row_ids=True)
    else:
        dataset = ray.data.read_parquet(teacher_files, num_cpus=DATA_TASK_CPUS)  # rows keep their source `row_id`
        if task_rates is not None:
            dataset = dataset.map_batches(
                resample_rows,
                fn_kwargs={"config_json": config.model_dump_json(), "rates": task_rates},
                batch_format="pyarrow",
                num_cpus=DATA_TASK_CPUS,
            )
    if config.data.sources:
        # A stream reads its files in order: a source's rows would all come at the end of the epoch (its task in
        # none of the batches before). Shuffled whole, every epoch afresh, they mix with the rest from the start.
        dataset = dataset.random_shuffle()
    return dataset, epoch_rows
