"""Per-task sources (GLUE-style TSV, CSV, Parquet) -> sharded mixed-task Parquet in the data contract.

What a source holds follows its task's type (`tasks.<task>.type` of the training config; classification without
one). Without a header line the columns come in this order:

    classification       text  label              label: one of the task's label names, or an id
    pair_classification  text  text_pair  label
    similarity           text  text_pair  score   score: a number within the task's score_range
    multilabel           text  labels             labels: comma-separated names or ids, possibly none

A first line naming columns (`text` or `sentence`, `text_pair` or `sentence2`, `label`, ...: HEADER_NAMES) is a
header and its columns are matched by name. A line or header that does not fit the type is refused (nothing is
dropped silently), and every bad value is named by file:line (Parquet: file, row).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtl.config import TASK_COLUMNS, TaskConfig
from mtl.data.contract import DataError

# The contract columns each task type reads besides `text`, in the order of a headerless line.
TYPE_COLUMNS = {kind: tuple(key.removesuffix("_column") for key in keys) for kind, keys in TASK_COLUMNS.items()}
# Header (and Parquet) names of each contract column, GLUE's among them.
HEADER_NAMES = {
    "text": ("text", "sentence", "sentence1", "question1", "premise"),
    "text_pair": ("text_pair", "sentence2", "question2", "hypothesis"),
    "label": ("label",),
    "score": ("score",),
    "labels": ("labels",),
}
COLUMN_OF = {name: column for column, names in HEADER_NAMES.items() for name in names}
# Written columns, in this order and of these types; a file has those some of its rows need, null in the others.
OUTPUT_TYPES = {
    "text": pa.string(),
    "text_pair": pa.string(),
    "task": pa.string(),
    "label": pa.int64(),
    "score": pa.float64(),
    "labels": pa.list_(pa.int64()),
}
INTEGER = re.compile(r"[+-]?\d+")


def _names_or_ids(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)


# What a Parquet source's value columns may hold: (check, what the error says is expected).
PARQUET_KINDS = {
    "label": (_names_or_ids, "label ids (integers) or names (strings)"),
    "score": (lambda kind: pa.types.is_integer(kind) or pa.types.is_floating(kind), "numbers"),
    "labels": (
        lambda kind: (
            (pa.types.is_list(kind) or pa.types.is_large_list(kind))
            and (_names_or_ids(kind.value_type) or pa.types.is_null(kind.value_type))
        ),
        "lists of label ids or names",
    ),
}
NO_CONFIG = "task types come from --config (tasks.<task>.type); without it every task is classification"


@dataclass
class Source:
    """One task's source as contract columns of Python values, and where each row came from."""

    path: Path
    columns: dict[str, list]
    lines: list[int] | None  # the file line of each row (TSV, CSV); None for Parquet, whose rows count from 0
    header: bool  # the columns were named (a header line, or Parquet)

    def where(self, row: int) -> str:
        return f"{self.path}:{self.lines[row]}" if self.lines is not None else f"{self.path}, row {row}"


def read_source(path: Path, task: str, task_type: str, configured: bool = True) -> Source:
    """A task's source file (format from the extension) with exactly the columns its type reads."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: source file not found")
    if suffix not in (".tsv", ".csv", ".parquet"):
        raise DataError(f"{path}: unsupported source format {suffix!r} (use .tsv, .csv or .parquet)")
    expected = ("text", *TYPE_COLUMNS[task_type])
    fits = f"task {task!r} ({task_type}) reads {', '.join(expected)}"
    hint = "" if configured else f"; {NO_CONFIG}"
    if suffix == ".parquet":
        table = pq.read_table(path)
        columns = _match_names(table.column_names, expected, path, "", fits, hint)
        if table.num_rows == 0:
            raise DataError(f"{path}: no rows for task {task!r}")
        values = {}
        for column, name in zip(columns, table.column_names, strict=True):
            data = table.column(name)
            if column in ("text", "text_pair") and not pa.types.is_string(data.type):
                try:
                    data = data.cast(pa.string())
                except pa.ArrowException:
                    raise DataError(f"{path}: column {name!r} has type {data.type}, expected string") from None
            elif column in PARQUET_KINDS and not PARQUET_KINDS[column][0](data.type):
                raise DataError(f"{path}: column {name!r} has type {data.type}, expected {PARQUET_KINDS[column][1]}")
            values[column] = data.to_pylist()
        return Source(path, values, None, True)

    records = _records(path, suffix)
    header = bool(records) and any(cell.strip() in COLUMN_OF for cell in records[0][1])
    if header:
        line, cells = records.pop(0)
        columns = _match_names([cell.strip() for cell in cells], expected, path, f" (header, line {line})", fits, hint)
    else:
        columns = list(expected)
    if not records:
        raise DataError(f"{path}: no rows (header only?) for task {task!r}")
    values = {column: [] for column in columns}
    lines = []
    for line, cells in records:
        if len(cells) != len(columns):
            raise DataError(
                f"{path}: not a {suffix[1:].upper()} of {', '.join(columns)} per line: line {line} has {len(cells)} "
                f"column(s), {fits}{hint}"
            )
        for column, cell in zip(columns, cells, strict=True):
            values[column].append(cell)
        lines.append(line)
    return Source(path, values, lines, header)


def _match_names(
    names: list[str], expected: tuple[str, ...], path: Path, where: str, fits: str, hint: str
) -> list[str]:
    """The contract column of each named column; an error unless they are exactly the ones the task reads."""
    unknown = [name for name in names if name not in COLUMN_OF]
    if unknown:
        raise DataError(f"{path}{where}: column(s) {unknown} unknown ({fits}; names: {list(COLUMN_OF)})")
    columns = [COLUMN_OF[name] for name in names]
    pairs = [name for name in names if COLUMN_OF[name] == "text_pair"]
    if pairs and "text_pair" not in expected:
        raise DataError(
            f"{path}: column(s) {pairs} hold a second text{where}, but {fits}, and would drop it"
            f"{hint or ': remove the column or give the task a pair type in the config'}"
        )
    if sorted(columns) != sorted(expected):
        raise DataError(f"{path}{where}: columns {names} do not fit: {fits}{hint}")
    return columns


def _records(path: Path, suffix: str) -> list[tuple[int, list[str]]]:
    """The file's non-blank records as (line number, cells). TSV: split on tabs, quotes mean nothing (GLUE texts
    hold bare " characters); CSV: the csv module's quoting, so a record may span lines (its first one counts)."""
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({error.reason})") from None
    if suffix == ".tsv":
        lines = (line.removesuffix("\r") for line in text.split("\n"))
        return [(number, line.split("\t")) for number, line in enumerate(lines, start=1) if line]
    reader = csv.reader(io.StringIO(text, newline=""))
    records, end = [], 0
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num
            if cells:
                records.append((start, cells))
    except csv.Error as error:
        raise DataError(f"{path}:{reader.line_num}: not a CSV ({error})") from None
    return records


def source_rows(
    path: Path,
    task: str,
    label_names: list[str] | None,
    task_type: str | None = None,
    score_range: tuple[float, float] | None = None,
    order: list[str] | None = None,
) -> tuple[pa.Table, list[str]]:
    """One task's rows as `text`, `task` and what its type reads (`text_pair`, `label` id, `score`, `labels` ids),
    and the task's label names ([] for similarity). `task_type` None: classification, as no config says otherwise.
    `order` (the config's label names): the names of a headerless source's labels when `label_names` is None."""
    source = read_source(path, task, task_type or "classification", configured=task_type is not None)
    count = len(source.columns["text"])
    rows = {"text": source.columns["text"], "task": [task] * count}
    if "text_pair" in source.columns:
        rows["text_pair"] = source.columns["text_pair"]
    if "score" in source.columns:
        rows["score"] = _scores(source, task, score_range)
    if "label" in source.columns:
        cells = source.columns["label"]
        if source.lines is not None:  # text cells: " HUM" is HUM; an empty cell is no label
            cells = [cell.strip() or None for cell in cells]
        groups = [None if value is None else [value] for value in cells]
        ids, label_names = _label_ids(source, "label", groups, label_names, order, task)
        rows["label"] = [group[0] for group in ids]
    if "labels" in source.columns:
        groups = [_split_labels(source, row, value) for row, value in enumerate(source.columns["labels"])]
        rows["labels"], label_names = _label_ids(source, "labels", groups, label_names, order, task)
    table = pa.table({name: pa.array(values, OUTPUT_TYPES[name]) for name, values in rows.items()})
    return table.select([name for name in OUTPUT_TYPES if name in rows]), label_names or []


def _split_labels(source: Source, row: int, value: str | list | None) -> list | None:
    """A multilabel cell's items: a TSV/CSV cell is comma-separated (empty: no label), a Parquet value a list."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return []
    items = [item.strip() for item in value.split(",")]
    if "" in items:
        raise DataError(f"{source.where(row)}: column 'labels': {value!r} has an empty label name")
    return items


def _label_ids(
    source: Source, column: str, groups: list[list | None], names: list[str] | None, order: list[str] | None, task: str
) -> tuple[list[list[int]], list[str]]:
    """Each row's labels (names or ids) as ids into the task's label names: `names` (what the source's ids mean),
    else labels.json beside the source for ids, the names found in the data (a file with a header) or the config's
    `order` (a file without).

    A file's labels are all names or all ids: in text files ids when every one is an integer and not all are
    known names (a task may name its labels "1".."5"); in Parquet the column type says."""
    items = [item for group in groups if group is not None for item in group]
    known = set(names if names is not None else order or [])
    if source.lines is not None:
        by_id = not (known and all(item in known for item in items)) and all(INTEGER.fullmatch(i) for i in items)
        if by_id:
            groups = [None if group is None else [int(item) for item in group] for group in groups]
    else:
        by_id = bool(items) and all(isinstance(item, int) for item in items)
    if names is None and by_id:
        names = _labels_json_beside(source.path, task)
    if names is None and not source.header:
        # The first line may be a header this reader does not know: its label cell must not become a label name.
        if order is None:
            raise DataError(
                f"{source.path}: no header line, so label names cannot come from the data: pass --labels "
                f"{task}=name0,name1,... or --config, or start the file with a header ({', '.join(source.columns)})"
            )
        names = order
    if names is None:
        names = sorted({str(item) for item in items})
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for row, group in enumerate(groups):
        if group is None:
            what = "null (an empty list means no label)" if column == "labels" else "no label"
            raise DataError(f"{source.where(row)}: column {column!r}: {what}")
        for item in group:
            if (by_id and not 0 <= item < len(names)) or (not by_id and item not in index):
                allowed = f"an id in 0..{len(names) - 1} of {names}" if by_id else f"one of {names}"
                raise DataError(f"{source.where(row)}: column {column!r}: {item!r} is not {allowed}")
        ids.append(list(group) if by_id else [index[item] for item in group])
    return ids, names


def _scores(source: Source, task: str, score_range: tuple[float, float] | None) -> list[float]:
    """The `score` column as floats: finite, and within the task's score_range when one is known."""
    scores = []
    for row, value in enumerate(source.columns["score"]):
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{source.where(row)}: column 'score': {value!r} is not a number") from None
        if not math.isfinite(score):
            raise DataError(f"{source.where(row)}: column 'score': {value!r} is not a finite number")
        if score_range is not None and not score_range[0] <= score <= score_range[1]:
            raise DataError(
                f"{source.where(row)}: column 'score': {value!r} is outside tasks.{task}.score_range "
                f"[{score_range[0]}, {score_range[1]}]"
            )
        scores.append(score)
    return scores


def reorder_labels(rows: pa.Table, names: list[str], order: list[str], task: str) -> tuple[pa.Table, list[str]]:
    """Re-number a task's label ids (`label`, `labels`) from the source's `names` to `order`."""
    missing = [name for name in names if name not in order]
    if missing:
        raise DataError(f"task {task!r}: source labels {missing} are not in the config's tasks.{task}.labels {order}")
    mapping = np.array([order.index(name) for name in names], dtype=np.int64)
    if "label" in rows.column_names:
        ids = mapping[rows.column("label").to_numpy()]
        rows = rows.set_column(rows.column_names.index("label"), "label", pa.array(ids))
    if "labels" in rows.column_names:
        lists = rows.column("labels").combine_chunks()
        lists = pa.ListArray.from_arrays(lists.offsets, pa.array(mapping[lists.flatten().to_numpy()], pa.int64()))
        rows = rows.set_column(rows.column_names.index("labels"), "labels", lists)
    return rows, order


def _labels_json_beside(path: Path, task: str) -> list[str]:
    labels_file = path.parent / "labels.json"
    if labels_file.is_file():
        names = json.loads(labels_file.read_text())
        if isinstance(names, dict) and isinstance(names.get("names"), list):
            return [str(name) for name in names["names"]]
    raise DataError(f"{path}: integer labels need names: pass --labels {task}=name0,name1,... or add labels.json")


def mix(tables: list[pa.Table]) -> pa.Table:
    """All tasks' rows under one schema: the columns some task needs, null in the rows of tasks that do not."""
    present = {name for table in tables for name in table.column_names}
    schema = pa.schema([(name, kind) for name, kind in OUTPUT_TYPES.items() if name in present])
    filled = []
    for table in tables:
        columns = [table[f.name] if f.name in table.column_names else pa.nulls(len(table), f.type) for f in schema]
        filled.append(pa.table(columns, schema=schema))
    return pa.concat_tables(filled)


def prepare(
    sources: dict[str, Path],
    labels: dict[str, list[str]],
    output: Path,
    shard_rows: int = 20_000,
    validation_fraction: float = 0.1,
    seed: int = 0,
    order: dict[str, list[str]] | None = None,
    tasks: dict[str, TaskConfig] | None = None,
) -> dict:
    """Mix, shuffle, split and shard; write `labels.json` beside the shards. Returns a summary.

    `tasks` (a training config's `tasks`): each source is read as its task's type (classification where it has
    none), scores checked against its score_range, and label ids written in its `labels` order. `order` (task ->
    label names) sets that order without a config. Either way a source label the order does not list is an error.
    """
    tables, names = [], {}
    for task, path in sources.items():
        settings = (tasks or {}).get(task)
        if settings is not None and settings.type == "similarity" and labels.get(task):
            raise DataError(f"--labels {task}=...: a similarity task has no labels (it is trained on scores)")
        wanted = (order or {}).get(task, list(settings.labels) if settings else None)
        rows, names[task] = source_rows(
            Path(path),
            task,
            labels.get(task),
            task_type=settings.type if settings else None,
            score_range=settings.score_range if settings else None,
            order=wanted,
        )
        if wanted is not None and {"label", "labels"} & set(rows.column_names):
            rows, names[task] = reorder_labels(rows, names[task], list(wanted), task)
        tables.append(rows)
    mixed = mix(tables)
    mixed = mixed.take(np.random.default_rng(seed).permutation(mixed.num_rows))
    validation_rows = int(round(mixed.num_rows * validation_fraction))
    clear_previous_output(output)
    output.mkdir(parents=True, exist_ok=True)
    files = []
    if validation_rows:
        pq.write_table(mixed.slice(0, validation_rows), output / "validation.parquet")
        files.append(str(output / "validation.parquet"))
    train = mixed.slice(validation_rows)
    if train.num_rows == 0:
        raise DataError(f"no training rows left: {mixed.num_rows} rows, {validation_rows} held out for validation")
    for shard, start in enumerate(range(0, train.num_rows, shard_rows)):
        path = output / f"train-{shard:05d}.parquet"
        pq.write_table(train.slice(start, shard_rows), path)
        files.append(str(path))
    (output / "labels.json").write_text(json.dumps(names, indent=2))
    (output / WRITTEN).write_text(json.dumps([Path(file).name for file in files] + ["labels.json"], indent=2))
    return {"train_rows": train.num_rows, "validation_rows": validation_rows, "files": files, "labels": names}


WRITTEN = "_prepared_files.json"


def clear_previous_output(output: Path) -> None:
    """Remove what an earlier `prepare` wrote here (listed in `_prepared_files.json`); refuse a directory holding
    Parquet or labels.json it did not write: stale shards would be read as training data by `data.train` globs."""
    if not output.is_dir():
        return
    ours = set(json.loads((output / WRITTEN).read_text())) if (output / WRITTEN).is_file() else set()
    foreign = sorted(p.name for p in output.iterdir() if p.suffix == ".parquet" or p.name == "labels.json")
    foreign = [name for name in foreign if name not in ours]
    if foreign:
        raise DataError(
            f"--output {output} holds {len(foreign)} file(s) prepare_data did not write ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); they would be read as training data: choose an empty directory"
        )
    # Only entries of this directory whose plain names the record lists: a listed "../x" or "/x" names nothing here.
    for path in output.iterdir():
        if path.name in ours and path.is_file():
            path.unlink()
    (output / WRITTEN).unlink(missing_ok=True)
