"""The Parquet data contract: `text` and `task` (strings) in every row, and what the row's task type reads:
`label` (int id or label name: classification, pair_classification), `text_pair` (string: pair_classification,
similarity), `score` (number within the task's score_range: similarity), `labels` (list of ids or names: multilabel).
A column no configured row needs may be absent.

Schema problems always stop with an error naming file and column. Bad rows stop with an error naming
file, row, column and value (`data.on_bad_rows: error`) or are dropped and counted per reason (`skip`).
Validated rows come out as `text`, `text_pair` (null for single-text rows), `task_id` (int32, index into the
config's tasks), `label` (int64: the label id; for multilabel rows a bit set, bit i = label i; 0 for similarity)
and `score` (float32, NaN unless similarity).

`data.sources` (mtl.config.SourceConfig) are files with their own column names and one task: their batches are
renamed to the contract (`normalise`) and split into a training rest and a held-out validation part by a hash of
each row's texts (`holdout_mask`) before the same validation.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtl.config import Config, DataConfig, SourceConfig
from mtl.errors import UserError

BAD_ROW_REASONS = {
    "null_text": "text is null",
    "empty_text": "text is empty or only whitespace",
    "unknown_task": "task is null or not a configured task",
    "null_label": "label is null (or the column is missing)",
    "label_out_of_range": "label id is outside the task's labels",
    "unknown_label": "label name is not one of the task's labels",
    "null_text_pair": "text_pair is null (or the column is missing): a pair task needs two texts",
    "empty_text_pair": "text_pair is empty or only whitespace",
    "null_score": "score is null or NaN (or the column is missing)",
    "score_out_of_range": "score is outside the task's score_range",
    "null_labels": "labels is null (or the column is missing); an empty list means no label",
    "labels_out_of_range": "a label id in labels is outside the task's labels",
    "unknown_labels": "a label name in labels is not one of the task's labels",
}
CLEAN_SCHEMA = pa.schema([
    ("text", pa.string()), ("text_pair", pa.string()), ("task_id", pa.int32()), ("label", pa.int64()),
    ("score", pa.float32()),
])  # fmt: skip
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
    if pa.types.is_floating(data_type):
        return "float"
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        inner = _kind(data_type.value_type)
        return f"list<{inner}>" if inner in ("string", "integer") else None
    return None


def check_schema(schema: pa.Schema, source: str, data: DataConfig, task_given: bool = False) -> dict[str, str | None]:
    """Check the contract columns a file has (`text` always, `task` unless its source names the task); return each
    optional column's kind (`integer`, `string`, `float`, `list<...>`), None where the file lacks it."""
    required = {data.text_column: ("string",)}
    if not task_given:
        required[data.task_column] = ("string",)
    optional = {
        data.label_column: ("integer", "string"),
        data.text_pair_column: ("string",),
        data.score_column: ("float", "integer"),
        data.labels_column: ("list<integer>", "list<string>"),
    }
    kinds: dict[str, str | None] = {}
    for column, allowed in {**required, **optional}.items():
        if column not in schema.names:
            if column in required:
                raise DataError(f"{source}: missing column {column!r} (columns are {schema.names})")
            kinds[column] = None
            continue
        found = schema.field(column).type
        if _kind(found) not in allowed:
            raise DataError(f"{source}: column {column!r} has type {found}, expected {' or '.join(allowed)}")
        kinds[column] = _kind(found)
    return kinds


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


def _column(batch: pa.Table | pa.RecordBatch, name: str, length: int) -> pa.Array | pa.ChunkedArray:
    """A batch's column, or all-null where the file has no such column."""
    if name in batch.column_names:
        return batch.column(name)
    return pa.nulls(length)


def _label_ids(column, kind: str | None, lookups: list[dict], task_ids: np.ndarray, sizes: np.ndarray):
    """(ids, bad mask, reason) of a single-label column: ids checked against each row's task."""
    if kind == "integer":
        ids = np.asarray(column.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        return ids, (ids < 0) | (ids >= sizes[task_ids]), "label_out_of_range"
    names = column.to_numpy(zero_copy_only=False)
    ids = np.array([lookups[t].get(n, -1) if t >= 0 else -1 for t, n in zip(task_ids, names, strict=True)], np.int64)
    return ids, ids < 0, "unknown_label"


def _label_sets(column, kind: str | None, lookups: list[dict], task_ids: np.ndarray, sizes: np.ndarray):
    """(bit sets, bad mask, reason) of a multilabel `labels` column; bit i set = label i present."""
    values = column.to_pylist()
    bits = np.zeros(len(values), dtype=np.int64)
    bad = np.zeros(len(values), dtype=bool)
    for row, (task, items) in enumerate(zip(task_ids, values, strict=True)):
        if items is None or task < 0:
            continue
        ids = items if kind == "list<integer>" else [lookups[task].get(item, -1) for item in items]
        if any(i is None or i < 0 or i >= sizes[task] for i in ids):
            bad[row] = True
            continue
        for i in ids:
            bits[row] |= 1 << int(i)
    return bits, bad, "labels_out_of_range" if kind == "list<integer>" else "unknown_labels"


def validate_batch(
    batch: pa.Table | pa.RecordBatch,
    source: str,
    first_row: int,
    config: Config,
    kinds: dict[str, str | None],
    select: np.ndarray | None = None,
) -> tuple[pa.Table, RowReport]:
    """Check every row of one batch against what its task's type reads; return the clean rows and what was dropped.

    `kinds`: `check_schema`'s column kinds. `select`: only these rows are read (a source's training or held-out
    part); the others are neither checked nor counted. One function on purpose (longer than most): the checks share
    the batch's columns and masks, and their order decides which single reason a bad row is counted under."""
    data = config.data
    task_names = config.task_names
    num_rows = batch.num_rows
    select = np.ones(num_rows, dtype=bool) if select is None else select
    for name in (data.text_column, data.text_pair_column):
        if name in batch.column_names:
            check_utf8(batch.column(name), source, first_row, name)
    texts = batch.column(data.text_column).to_numpy(zero_copy_only=False)  # object array, None for null
    tasks = batch.column(data.task_column).to_numpy(zero_copy_only=False)
    pairs = _column(batch, data.text_pair_column, num_rows).to_numpy(zero_copy_only=False)

    task_index = {name: index for index, name in enumerate(task_names)}
    task_ids = np.array([task_index.get(task, -1) for task in tasks], dtype=np.int32)
    types = [config.tasks[name].type for name in task_names]
    sizes = np.array([len(config.tasks[name].labels) for name in task_names] + [0], dtype=np.int64)
    lookups = [{label: i for i, label in enumerate(config.tasks[n].labels)} for n in task_names]

    def of_types(*wanted: str) -> np.ndarray:  # rows whose task has one of these types
        hits = np.array([kind in wanted for kind in types] + [False])
        return hits[task_ids]

    single, pair, similarity, multilabel = (
        of_types("classification", "pair_classification"), of_types("pair_classification", "similarity"),
        of_types("similarity"), of_types("multilabel"),
    )  # fmt: skip
    label_column = _column(batch, data.label_column, num_rows)
    label_null = np.asarray(label_column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    label_ids, label_bad, label_reason = _label_ids(
        label_column, kinds.get(data.label_column), lookups, task_ids, sizes
    )
    score_column = _column(batch, data.score_column, num_rows).cast(pa.float64())
    scores = np.asarray(score_column.fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
    ranges = np.array([config.tasks[n].score_range or (0.0, 0.0) for n in task_names] + [(0.0, 0.0)])[task_ids]
    labels_column = _column(batch, data.labels_column, num_rows)
    labels_null = np.asarray(labels_column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    label_sets, sets_bad, sets_reason = _label_sets(
        labels_column, kinds.get(data.labels_column), lookups, task_ids, sizes
    )

    text_null = np.array([text is None for text in texts], dtype=bool)
    text_empty = np.array([text is not None and not text.strip() for text in texts], dtype=bool)
    pair_null = np.array([text is None for text in pairs], dtype=bool)
    pair_empty = np.array([text is not None and not text.strip() for text in pairs], dtype=bool)
    task_bad = task_ids < 0
    with np.errstate(invalid="ignore"):
        score_bad = (scores < ranges[:, 0]) | (scores > ranges[:, 1])
    # One reason per row, checked in this order.
    checks = [
        ("null_text", data.text_column, text_null),
        ("empty_text", data.text_column, text_empty),
        ("unknown_task", data.task_column, task_bad),
        ("null_text_pair", data.text_pair_column, pair & pair_null),
        ("empty_text_pair", data.text_pair_column, pair & pair_empty),
        ("null_label", data.label_column, single & label_null),
        (label_reason, data.label_column, single & label_bad & ~label_null),
        ("null_score", data.score_column, similarity & np.isnan(scores)),
        ("score_out_of_range", data.score_column, similarity & score_bad),
        ("null_labels", data.labels_column, multilabel & labels_null),
        (sets_reason, data.labels_column, multilabel & sets_bad),
    ]
    report = RowReport(rows_in=int(select.sum()))
    bad = ~select
    for reason, column, mask in checks:
        fresh = mask & ~bad
        if not fresh.any():
            continue
        if data.on_bad_rows == "error":
            row = int(np.flatnonzero(fresh)[0])
            allowed = _allowed(reason, config, tasks[row])
            if column not in batch.column_names:
                raise DataError(
                    f"{source}: missing column {column!r} (columns are {batch.column_names}), needed from row "
                    f"{first_row + row} on{allowed}"
                )
            value = batch.column(column)[row].as_py()
            raise DataError(
                f"{source}: row {first_row + row}, column {column!r}: {BAD_ROW_REASONS[reason]} "
                f"(value {value!r}){allowed}; fix the data or set data.on_bad_rows=skip to drop and count such rows"
            )
        report.skipped[reason] += int(fresh.sum())
        bad |= fresh
    keep = ~bad
    report.rows_out = int(keep.sum())
    label = np.where(multilabel, label_sets, np.where(single, label_ids, 0))
    columns = {
        "text": pa.array(texts[keep], type=pa.string()),
        "text_pair": pa.array(np.where(pair, pairs, None)[keep], type=pa.string()),
        "task_id": pa.array(task_ids[keep], type=pa.int32()),
        "label": pa.array(label[keep], type=pa.int64()),
        "score": pa.array(np.where(similarity, scores, np.nan)[keep], type=pa.float32()),
    }
    if ROW_HASH in batch.column_names:  # Ray Data's id of each row, kept for resuming mid-epoch
        columns["row_id"] = pa.array(batch.column(ROW_HASH).to_numpy()[keep], type=pa.uint64())
        return pa.table(columns), report
    return pa.table(columns, schema=CLEAN_SCHEMA), report


def _allowed(reason: str, config: Config, task: object) -> str:
    if reason == "unknown_task":
        return f"; configured tasks: {config.task_names}"
    if task not in config.tasks:
        return ""
    settings = config.tasks[task]
    if reason in ("label_out_of_range", "unknown_label", "labels_out_of_range", "unknown_labels"):
        return f"; task {task!r} has labels {settings.labels} (ids 0..{len(settings.labels) - 1})"
    if reason in ("score_out_of_range", "null_score"):
        return f"; task {task!r} has score_range {list(settings.score_range)}"
    return f"; task {task!r} is a {settings.type} task"


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


def holdout_mask(texts: pa.Array | pa.ChunkedArray, pairs: pa.Array | pa.ChunkedArray | None, fraction: float):
    """Rows held out for validation: blake2b of the row's text (and second text) below `fraction` of the hash
    space. A row's side depends only on its texts (every read, every machine; duplicates on the same side)."""
    firsts = texts.to_pylist()
    seconds = pairs.to_pylist() if pairs is not None else [None] * len(firsts)
    limit = int(fraction * 2**64)
    out = np.empty(len(firsts), dtype=bool)
    for row, (first, second) in enumerate(zip(firsts, seconds, strict=True)):
        key = f"{first}\x00{second}".encode("utf-8", "surrogatepass")
        out[row] = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") < limit
    return out


def normalise(batch: pa.Table | pa.RecordBatch, source: SourceConfig, data: DataConfig) -> pa.Table:
    """A source's batch with the contract's column names and its task in the task column."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    targets = {"text": data.text_column, "text_pair": data.text_pair_column, "label": data.label_column,
               "score": data.score_column, "labels": data.labels_column}  # fmt: skip
    renamed = {source.columns.get(name, target): target for name, target in targets.items()}
    table = table.rename_columns([renamed.get(name, name) for name in table.column_names])
    tasks = pa.array(np.full(table.num_rows, source.task, dtype=object), type=pa.string())
    if data.task_column in table.column_names:
        return table.set_column(table.schema.get_field_index(data.task_column), data.task_column, tasks)
    return table.append_column(data.task_column, tasks)


def source_columns(source: SourceConfig | None, data: DataConfig, schema: pa.Schema) -> list[str]:
    """The columns of a file the contract reads (by the file's own names for a source), those it has."""
    wanted = [data.text_column, data.text_pair_column, data.label_column, data.score_column, data.labels_column]
    if source is None:
        wanted.append(data.task_column)
    else:
        names = {"text": data.text_column, "text_pair": data.text_pair_column, "label": data.label_column,
                 "score": data.score_column, "labels": data.labels_column}  # fmt: skip
        wanted = [source.columns.get(name, column) for name, column in names.items()]
    return [column for column in wanted if column in schema.names]


def part_mask(table: pa.Table, source: SourceConfig | None, split: str, data: DataConfig) -> np.ndarray | None:
    """The rows of a normalised source batch that belong to `split` (None: all of them)."""
    if source is None or source.holdout is None:
        return None
    pairs = table.column(data.text_pair_column) if data.text_pair_column in table.column_names else None
    held = holdout_mask(table.column(data.text_column), pairs, source.holdout)
    return held if split == "validation" else ~held


def sources_by_file(config: Config) -> dict[str, SourceConfig]:
    """Resolved file path -> the `data.sources` entry it belongs to."""
    found: dict[str, SourceConfig] = {}
    for index, source in enumerate(config.data.sources):
        for path in expand_paths([source.path], f"data.sources[{index}].path"):
            found[str(Path(path).resolve())] = source
    return found


def split_files(config: Config, split: str) -> list[str]:
    """Every file of a split: `data.train` (or `data.validation`) and the `data.sources` files (for validation,
    those with a holdout); a file may not be both a plain file and a source."""
    key = f"data.{split}"
    patterns = config.data.train if split == "train" else config.data.validation
    plain = expand_paths(patterns, key) if patterns or split == "train" and not config.data.sources else []
    sourced = list(sources_by_file(config).items())
    if split == "validation":
        sourced = [(path, source) for path, source in sourced if source.holdout is not None]
    both = sorted({str(Path(path).resolve()) for path in plain} & {path for path, _ in sourced})
    if both:
        raise DataError(f"{both[0]}: listed in {key} and in data.sources; a file is read one way")
    return plain + [path for path, _ in sourced]


def iter_validated(
    files: list[str], config: Config, batch_rows: int = 65_536, split: str = "train"
) -> Iterator[tuple[pa.Table, RowReport]]:
    """Stream each file in record batches, yielding clean rows; constant memory per batch. Files of `data.sources`
    are renamed to the contract and give their `split` part (training rest or held-out validation rows)."""
    sources = sources_by_file(config) if config.data.sources else {}
    for path in files:
        source = sources.get(str(Path(path).resolve()))
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as error:
            raise DataError(f"{path}: not a readable Parquet file: {error}") from error
        columns = source_columns(source, config.data, parquet.schema_arrow)
        first_row = 0
        kinds = None
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            table = pa.Table.from_batches([batch]) if source is None else normalise(batch, source, config.data)
            if kinds is None:
                kinds = check_schema(table.schema, path, config.data)
                if kinds[config.data.label_column] == "integer":  # ids only mean something in the data's order
                    check_label_order(path, config)
            yield validate_batch(table, path, first_row, config, kinds, part_mask(table, source, split, config.data))
            first_row += batch.num_rows
        if kinds is None:  # an empty file: its schema is still checked
            check_schema(parquet.schema_arrow, path, config.data, task_given=source is not None)


def read_validated(
    patterns: list[str], config: Config, key: str = "data.train", files: list[str] | None = None
) -> tuple[pa.Table, RowReport]:
    """All clean rows of the matched files (or of `files`, already expanded) in one table, with the row report."""
    report = RowReport()
    tables = []
    split = "validation" if key == "data.validation" else "train"
    files = files if files is not None else expand_paths(patterns, key)
    for clean, batch_report in iter_validated(files, config, split=split):
        tables.append(clean)
        report.add(batch_report)
    if report.rows_out == 0:
        raise DataError(f"{key}: no usable rows left ({report.as_dict()})")
    return pa.concat_tables(tables) if tables else CLEAN_SCHEMA.empty_table(), report


def read_split(config: Config, split: str) -> tuple[pa.Table, RowReport]:
    """The clean rows of `data.train` or `data.validation` with their `data.sources` parts."""
    return read_validated([], config, f"data.{split}", files=split_files(config, split))
