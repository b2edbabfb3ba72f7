"""Per-task sources (GLUE-style TSV, CSV, Parquet) -> sharded mixed-task Parquet in the data contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtl.data.contract import DataError

TEXT_COLUMNS = ("text", "sentence")  # first one present is the text
PAIR_COLUMNS = ("text_pair", "sentence2", "question2", "hypothesis")  # a second text: not dropped silently


def read_source(path: Path) -> pa.Table:
    """A source file as a table; format from the extension (.tsv, .csv, .parquet)."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: source file not found")
    if suffix == ".parquet":
        return pq.read_table(path)
    if suffix in (".tsv", ".csv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        # Quotes mean nothing in GLUE TSV (texts contain bare " characters).
        parse = pacsv.ParseOptions(delimiter=delimiter, quote_char=False if suffix == ".tsv" else '"')
        convert = pacsv.ConvertOptions(strings_can_be_null=False)
        try:
            return pacsv.read_csv(path, parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid as error:  # pyarrow names the line's content, not the file
            raise DataError(f"{path}: not a {suffix[1:].upper()} of a text and a label per line ({error})") from None
    raise DataError(f"{path}: unsupported source format {suffix!r} (use .tsv, .csv or .parquet)")


def source_rows(path: Path, task: str, label_names: list[str] | None) -> tuple[pa.Table, list[str]]:
    """One task's rows as `text`, `task`, `label` (int id), and the task's label names."""
    table = read_source(path)
    pair_columns = [name for name in table.column_names if name in PAIR_COLUMNS]
    if pair_columns:
        raise DataError(
            f"{path}: column(s) {pair_columns} hold a second text; prepare_data writes single-text rows only, and "
            "would drop them: remove the column or keep pair data out of this run"
        )
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows (header only?) for task {task!r}")
    text_column = next((name for name in TEXT_COLUMNS if name in table.column_names), None)
    if text_column is None or "label" not in table.column_names:
        raise DataError(
            f"{path}: needs a text column ({' or '.join(TEXT_COLUMNS)}) and 'label'; has {table.column_names}"
        )
    texts = table.column(text_column).cast(pa.string())
    labels = table.column("label")
    if pa.types.is_integer(labels.type):
        if label_names is None:
            label_names = _labels_json_beside(path, task)
        ids = np.asarray(labels.fill_null(-1).to_numpy(), dtype=np.int64)
        bad = np.flatnonzero((ids < 0) | (ids >= len(label_names)))
        if bad.size:
            raise DataError(
                f"{path}: row {bad[0]}, column 'label': id {labels[int(bad[0])].as_py()} outside {label_names}"
            )
    else:
        values = labels.cast(pa.string()).to_pylist()
        if label_names is None:
            label_names = sorted({value for value in values if value is not None})
        index = {name: i for i, name in enumerate(label_names)}
        ids = np.array([index.get(value, -1) for value in values], dtype=np.int64)
        bad = np.flatnonzero(ids < 0)
        if bad.size:
            raise DataError(f"{path}: row {bad[0]}, column 'label': {values[bad[0]]!r} is not one of {label_names}")
    rows = pa.table({"text": texts, "task": pa.array([task] * table.num_rows, pa.string()), "label": pa.array(ids)})
    return rows, label_names


def reorder_labels(rows: pa.Table, names: list[str], order: list[str], task: str) -> tuple[pa.Table, list[str]]:
    """Re-number a task's label ids from the source's `names` to `order`."""
    missing = [name for name in names if name not in order]
    if missing:
        raise DataError(f"task {task!r}: source labels {missing} are not in the config's tasks.{task}.labels {order}")
    mapping = np.array([order.index(name) for name in names], dtype=np.int64)
    ids = mapping[rows.column("label").to_numpy()]
    return rows.set_column(rows.column_names.index("label"), "label", pa.array(ids)), order


def _labels_json_beside(path: Path, task: str) -> list[str]:
    labels_file = path.parent / "labels.json"
    if labels_file.is_file():
        names = json.loads(labels_file.read_text())
        if isinstance(names, dict) and isinstance(names.get("names"), list):
            return [str(name) for name in names["names"]]
    raise DataError(f"{path}: integer labels need names: pass --labels {task}=name0,name1,... or add labels.json")


def prepare(
    sources: dict[str, Path],
    labels: dict[str, list[str]],
    output: Path,
    shard_rows: int = 20_000,
    validation_fraction: float = 0.1,
    seed: int = 0,
    order: dict[str, list[str]] | None = None,
) -> dict:
    """Mix, shuffle, split and shard; write `labels.json` beside the shards. Returns a summary.

    `order` (task -> label names, e.g. a training config's `tasks.*.labels`): the ids written follow it, whatever the
    source's own order; a source label it does not list is an error.
    """
    tables, names = [], {}
    for task, path in sources.items():
        rows, names[task] = source_rows(Path(path), task, labels.get(task))
        if order and task in order:
            rows, names[task] = reorder_labels(rows, names[task], list(order[task]), task)
        tables.append(rows)
    mixed = pa.concat_tables(tables)
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
