"""The Parquet data contract: `text` (string), `task` (string), `label` (int id or label name).

Schema problems always stop with an error naming file and column. Bad rows stop with an error naming
file, row, column and value (`data.on_bad_rows: error`) or are dropped and counted per reason (`skip`).
Validated rows come out as `text` (string), `task_id` (int32, index into the config's tasks) and
`label` (int64 id).
"""

from __future__ import annotations

import glob
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtl.config import Config, DataConfig
from mtl.errors import UserError

BAD_ROW_REASONS = {
    "null_text": "text is null",
    "empty_text": "text is empty or only whitespace",
    "unknown_task": "task is null or not a configured task",
    "null_label": "label is null",
    "label_out_of_range": "label id is outside the task's labels",
    "unknown_label": "label name is not one of the task's labels",
}
CLEAN_SCHEMA = pa.schema([("text", pa.string()), ("task_id", pa.int32()), ("label", pa.int64())])
# `ray.data.read_parquet(include_row_hash=True)`'s column: a hash of file path and row position, the same every read.
ROW_HASH = "row_hash"


class DataError(UserError):
    """Input data that breaks the contract; the message names file, row and column."""


@dataclass
class RowReport:
    """What reading kept and dropped, per reason."""

    rows_in: int = 0
    rows_out: int = 0
    skipped: Counter = field(default_factory=Counter)

    def add(self, other: RowReport) -> None:
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.skipped.update(other.skipped)

    def as_dict(self) -> dict:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out, "skipped": dict(self.skipped)}


def expand_paths(patterns: list[str], key: str) -> list[str]:
    """Files matched by each path or glob, sorted; every pattern must match something."""
    if not patterns:
        raise DataError(f"{key} is empty: give at least one Parquet file or glob")
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(Path(pattern).expanduser())))
        if not matched:
            raise DataError(f"{key}: {pattern!r} matches no file (relative paths start at {Path.cwd()})")
        files.extend(matched)
    return files


def _kind(data_type: pa.DataType) -> str | None:
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return "string"
    if pa.types.is_integer(data_type):
        return "integer"
    return None


def check_schema(schema: pa.Schema, source: str, data: DataConfig) -> str:
    """Check the three contract columns; return the label column's kind (`integer` or `string`)."""
    expected = {
        data.text_column: ("string",),
        data.task_column: ("string",),
        data.label_column: ("integer", "string"),
    }
    for column, allowed in expected.items():
        if column not in schema.names:
            raise DataError(f"{source}: missing column {column!r} (columns are {schema.names})")
        found = schema.field(column).type
        if _kind(found) not in allowed:
            raise DataError(f"{source}: column {column!r} has type {found}, expected {' or '.join(allowed)}")
    return _kind(schema.field(data.label_column).type)


def read_schema(path: str, key: str) -> pa.Schema:
    """A Parquet file's schema from its footer; an error naming the flag or key and the file if it is not Parquet."""
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"{key}: {path}: not a readable Parquet file ({error})") from None


def check_utf8(texts: pa.Array | pa.ChunkedArray, source: str, first_row: int, column: str) -> None:
    """Refuse a string column holding invalid UTF-8 (Parquet does not check it on write or read), naming the row."""
    try:
        texts.validate(full=True)
        return
    except pa.ArrowInvalid:
        pass
    for row, value in enumerate(texts.cast(pa.binary()).to_pylist()):
        try:
            value is None or value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"{source}: row {first_row + row}, column {column!r}: not valid UTF-8 ({error})") from None
    raise DataError(f"{source}: column {column!r}: not valid UTF-8")


def validate_batch(
    batch: pa.Table | pa.RecordBatch, source: str, first_row: int, config: Config, label_kind: str
) -> tuple[pa.Table, RowReport]:
    """Check every row of one batch; return the clean rows and what was dropped.

    One function on purpose (longer than most): the checks share the batch's columns and masks, and their order
    decides which single reason a bad row is counted under."""
    data = config.data
    task_names = config.task_names
    check_utf8(batch.column(data.text_column), source, first_row, data.text_column)
    texts = batch.column(data.text_column).to_numpy(zero_copy_only=False)  # object array, None for null
    tasks = batch.column(data.task_column).to_numpy(zero_copy_only=False)
    label_column = batch.column(data.label_column)
    num_rows = len(texts)

    task_index = {name: index for index, name in enumerate(task_names)}
    task_ids = np.array([task_index.get(task, -1) for task in tasks], dtype=np.int32)
    num_labels = np.array([len(config.tasks[name].labels) for name in task_names] + [0], dtype=np.int64)
    label_null = np.asarray(label_column.is_null().to_numpy(zero_copy_only=False), dtype=bool)

    if label_kind == "integer":
        label_ids = np.asarray(label_column.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        label_reason = "label_out_of_range"
        label_bad = (label_ids < 0) | (label_ids >= num_labels[task_ids])
    else:
        names = label_column.to_numpy(zero_copy_only=False)
        lookups = [{label: i for i, label in enumerate(config.tasks[n].labels)} for n in task_names]
        label_ids = np.array(
            [lookups[t].get(name, -1) if t >= 0 else -1 for t, name in zip(task_ids, names, strict=True)],
            dtype=np.int64,
        )
        label_reason = "unknown_label"
        label_bad = label_ids < 0

    text_null = np.array([text is None for text in texts], dtype=bool)
    text_empty = np.array([text is not None and not text.strip() for text in texts], dtype=bool)
    task_bad = task_ids < 0
    # One reason per row, checked in this order.
    checks = [
        ("null_text", data.text_column, text_null),
        ("empty_text", data.text_column, text_empty),
        ("unknown_task", data.task_column, task_bad),
        ("null_label", data.label_column, label_null & ~task_bad),
        (label_reason, data.label_column, label_bad & ~label_null & ~task_bad),
    ]
    report = RowReport(rows_in=num_rows)
    bad = np.zeros(num_rows, dtype=bool)
    for reason, column, mask in checks:
        fresh = mask & ~bad
        if not fresh.any():
            continue
        if data.on_bad_rows == "error":
            row = int(np.flatnonzero(fresh)[0])
            value = batch.column(column)[row].as_py()
            allowed = _allowed(reason, config, tasks[row])
            raise DataError(
                f"{source}: row {first_row + row}, column {column!r}: {BAD_ROW_REASONS[reason]} "
                f"(value {value!r}){allowed}; fix the data or set data.on_bad_rows=skip to drop and count such rows"
            )
        report.skipped[reason] += int(fresh.sum())
        bad |= fresh
    keep = ~bad
    report.rows_out = int(keep.sum())
    columns = {
        "text": pa.array(texts[keep], type=pa.string()),
        "task_id": pa.array(task_ids[keep], type=pa.int32()),
        "label": pa.array(label_ids[keep], type=pa.int64()),
    }
    if ROW_HASH in batch.column_names:  # Ray Data's id of each row, kept for resuming mid-epoch
        columns["row_id"] = pa.array(batch.column(ROW_HASH).to_numpy()[keep], type=pa.uint64())
        return pa.table(columns), report
    return pa.table(columns, schema=CLEAN_SCHEMA), report


def _allowed(reason: str, config: Config, task: object) -> str:
    if reason == "unknown_task":
        return f"; configured tasks: {config.task_names}"
    if reason in ("label_out_of_range", "unknown_label") and task in config.tasks:
        labels = config.tasks[task].labels
        return f"; task {task!r} has labels {labels} (ids 0..{len(labels) - 1})"
    return ""


def labels_beside(path: str | Path) -> tuple[Path, dict[str, list[str]]] | None:
    """The `labels.json` next to a data file, as task -> label names in id order; None if there is none.

    Two layouts: `jobs.prepare_data`'s `{task: [names]}` and `{"tasks": {task: {"names": [names]}}}`.
    """
    labels_file = Path(path).parent / "labels.json"
    if not labels_file.is_file():
        return None
    try:
        content = json.loads(labels_file.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{labels_file}: not valid JSON: {error}") from error
    tasks = content.get("tasks", content) if isinstance(content, dict) else {}
    names = {}
    for task, entry in tasks.items():
        entry = entry.get("names") if isinstance(entry, dict) else entry
        if isinstance(entry, list):
            names[task] = [str(name) for name in entry]
    return labels_file, names


def check_label_order(path: str, config: Config) -> None:
    """Integer label ids mean what the `labels.json` beside them says: refuse a config that orders them otherwise."""
    found = labels_beside(path)
    if found is None:
        return
    labels_file, names = found
    for task, settings in config.tasks.items():
        if task in names and names[task] != list(settings.labels):
            raise DataError(
                f"{labels_file}: label ids of task {task!r} mean {names[task]}, but tasks.{task}.labels is "
                f"{list(settings.labels)}: every {task} label would shift; list them in the data's order"
            )


def iter_validated(files: list[str], config: Config, batch_rows: int = 65_536) -> Iterator[tuple[pa.Table, RowReport]]:
    """Stream each file in record batches, yielding clean rows; constant memory per batch."""
    columns = [config.data.text_column, config.data.task_column, config.data.label_column]
    for path in files:
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as error:
            raise DataError(f"{path}: not a readable Parquet file: {error}") from error
        label_kind = check_schema(parquet.schema_arrow, path, config.data)
        if label_kind == "integer":  # names are matched by name; ids only mean something in the data's order
            check_label_order(path, config)
        first_row = 0
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            yield validate_batch(batch, path, first_row, config, label_kind)
            first_row += batch.num_rows


def read_validated(patterns: list[str], config: Config, key: str = "data.train") -> tuple[pa.Table, RowReport]:
    """All clean rows of the matched files in one table, with the row report."""
    report = RowReport()
    tables = []
    for clean, batch_report in iter_validated(expand_paths(patterns, key), config):
        tables.append(clean)
        report.add(batch_report)
    if report.rows_out == 0:
        raise DataError(f"{key}: no usable rows left ({report.as_dict()})")
    return pa.concat_tables(tables) if tables else CLEAN_SCHEMA.empty_table(), report
