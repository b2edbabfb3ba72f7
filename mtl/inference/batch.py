"""Offline embedding/scoring on Ray Data: Parquet in -> `ExportedModel` on an actor pool -> Parquet out.

The pre-flight reads only the schemas and the text column of each input file, so a wrong column,
a wrong type or (with `on_empty="error"`) a null/empty text is reported with its file and row before
any Ray work starts. Output goes to a staging directory renamed into place at the end: a failed run
leaves nothing that looks finished.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field
from ray.data import Datasink

from mtl.data.contract import DataError, check_utf8, expand_paths, read_schema
from mtl.errors import UserError
from mtl.export_format import UnknownTask, read_manifest, select_tasks

# Written into every finished output: what made it. `--overwrite` replaces only a directory that holds one.
OUTPUT_MARKER = "_jobs_embed.json"
ROW = "__row"  # each row's position in the whole input, carried to the writer (not written)
SKIP = "__skip"  # an empty text skipped under --on-empty skip: kept in the stream until written, then dropped


class OutputError(UserError):
    """An `--output` that cannot be written without risking data that is not this job's."""


class EmbedOptions(BaseModel):
    """The batch job's options (`jobs.embed --help` documents each flag); a bad value names its flag."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    inputs: list[str]
    output: str
    text_column: str = "text"
    keep_columns: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)  # [] embeddings only, ["all"] every task, else task names
    normalize: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"
    batch_size: int = Field(256, ge=1)  # rows per Ray Data batch; sorted by length and encoded in chunks of 64
    actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0)
    threads: int | None = Field(None, ge=1)  # torch threads per actor
    gpus_per_actor: float = Field(0.0, ge=0)
    on_empty: Literal["error", "skip"] = "error"
    overwrite: bool = False


def empty_mask(texts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """True where a text is null or only whitespace."""
    stripped = pc.utf8_trim_whitespace(texts)
    return pc.fill_null(pc.equal(pc.utf8_length(stripped), 0), True).to_numpy(zero_copy_only=False)


def check_inputs(options: EmbedOptions) -> tuple[list[str], dict]:
    """Check every input file's columns and texts; return the files and row counts (in, skipped by reason)."""
    files = expand_paths(options.inputs, "--input")
    counts = {"rows_in": 0, "skipped": {}}
    needed = [options.text_column, *options.keep_columns]
    for path in files:
        schema = read_schema(path, "--input")
        missing = [name for name in needed if name not in schema.names]
        if missing:
            raise DataError(f"{path}: no column(s) {missing} (has {schema.names}); see --text-column/--keep-columns")
        text_type = schema.field(options.text_column).type
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
            raise DataError(f"{path}: column {options.text_column!r} is {text_type}, expected string")
        texts = read_text_column(path, options.text_column)
        empty = empty_mask(texts)
        counts["rows_in"] += len(texts)
        if empty.any():
            if options.on_empty == "error":
                rows = np.flatnonzero(empty)[:5].tolist()
                raise DataError(
                    f"{path}: {int(empty.sum())} null or empty text(s) in column {options.text_column!r} "
                    f"(rows {rows}{'...' if empty.sum() > 5 else ''}); pass --on-empty skip to drop and count them"
                )
            counts["skipped"]["empty_text"] = counts["skipped"].get("empty_text", 0) + int(empty.sum())
    return files, counts


def check_output(options: EmbedOptions, files: list[str]) -> Path:
    """The resolved `--output`, refused before anything is written or moved when replacing it could lose data.

    An output that is, or holds, an input file, the export or the current directory is refused (symlinks followed),
    with or without `--overwrite`. A non-empty output is replaced only with `--overwrite` and only if an earlier
    `jobs.embed` wrote it (its `OUTPUT_MARKER` is there): anything else in that place is not ours to delete."""
    output = Path(options.output).expanduser().resolve()
    guarded = [(Path(path).resolve(), f"input {path}") for path in files]
    guarded += [(Path(options.model).resolve(), f"--model {options.model}"), (Path.cwd().resolve(), "the current "
                "directory")]  # fmt: skip
    for path, what in guarded:
        if path == output or output in path.parents:
            raise OutputError(f"--output {options.output}: it is or holds {what}; writing there could replace it")
    if output.exists() and not output.is_dir():
        raise OutputError(f"--output {options.output}: is a file, not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not options.overwrite:
            raise OutputError(f"--output {options.output}: exists and is not empty; pass --overwrite to replace it")
        if not (output / OUTPUT_MARKER).is_file():
            raise OutputError(
                f"--output {options.output}: not written by jobs.embed (no {OUTPUT_MARKER}); --overwrite replaces "
                "only an earlier job's output: choose another --output or empty it yourself"
            )
    return output


def read_text_column(path: str, column: str) -> pa.ChunkedArray:
    """One string column, its UTF-8 checked (a bad row is named with file, row and column)."""
    texts = pq.read_table(path, columns=[column]).column(column)
    check_utf8(texts, path, 0, column)
    return texts


def resolve_tasks(known: list[str], tasks: list[str]) -> list[str]:
    """[] -> no scoring; ["all"] -> every task of the export; else names checked against the export's tasks."""
    if not tasks:
        return []
    try:
        return select_tasks(known, None if tasks == ["all"] else tasks)
    except UnknownTask as error:
        raise UnknownTask(f"--tasks: {error}") from error


class EmbedBatch:
    """The Ray Data callable: one `ExportedModel` per actor, pyarrow batches in and out.

    Rows keep their input position (`ROW`) and stay in the batch even when skipped (`SKIP`, a null embedding), so
    the writer can tell consecutive input rows from a gap (`RowOrderedParquet`)."""

    def __init__(self, options: EmbedOptions):
        import torch  # in the actor only: the driver's pre-flight needs no torch

        from mtl.inference.exported_model import ExportedModel, normalize_rows

        self.normalize_rows = normalize_rows
        if options.threads:
            torch.set_num_threads(options.threads)
        device = "cuda" if options.gpus_per_actor > 0 else "cpu"
        self.model = ExportedModel.load(options.model, device=device, precision=options.precision)
        self.options = options
        self.tasks = resolve_tasks(list(self.model.labels), options.tasks)

    def __call__(self, batch: pa.Table) -> pa.Table:
        options = self.options
        texts = batch.column(options.text_column)
        skip = empty_mask(texts)  # pre-flight already refused empties unless on_empty == "skip"
        keep = np.flatnonzero(~skip)
        pooled = np.zeros((batch.num_rows, self.model.dim), dtype=np.float32)
        if len(keep):
            kept = texts.take(pa.array(keep)).to_pylist()
            pooled[keep] = self.model.encode(kept, batch_size=64).numpy()  # (B, H) float32
        vectors = self.normalize_rows(pooled) if options.normalize else pooled  # skipped rows stay zero
        columns = {name: batch.column(name) for name in options.keep_columns}
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1)), self.model.dim, mask=pa.array(skip)
        )
        if self.tasks:
            probabilities = self.model.head_probabilities(pooled, self.tasks)
            for task in self.tasks:
                ids = probabilities[task].argmax(axis=1)
                names = np.asarray(self.model.labels[task], dtype=object)
                columns[f"{task}_label"] = pa.array(names[ids].tolist(), pa.string())
                columns[f"{task}_label_id"] = pa.array(ids.astype(np.int32))
                columns[f"{task}_score"] = pa.array(probabilities[task].max(axis=1).astype(np.float32))
        if ROW in batch.column_names:
            columns[ROW] = batch.column(ROW)
            columns[SKIP] = pa.array(skip)
        return pa.table(columns)


@dataclass
class EmbedPlan:
    """What the pre-flight found: files, row counts, the row groups to read, the output and the pinned export."""

    options: EmbedOptions
    files: list[str]
    counts: dict
    pieces: list[dict]
    output: Path


def plan_embedding(options: EmbedOptions) -> EmbedPlan:
    """Everything checkable without Ray, before Ray starts: inputs (footers and text columns), the export's
    manifest and tasks, the output path. Errors name the flag, file, row or column."""
    files, counts = check_inputs(options)
    resolve_tasks(list(read_manifest(options.model)["tasks"]), options.tasks)  # bad names fail here, no weights read
    output = check_output(options, files)
    # Pin the export version this job reads (a published export is a symlink a new training run may move on).
    options = options.model_copy(update={"model": str(Path(options.model).resolve())})
    return EmbedPlan(options, files, counts, row_group_pieces(files), output)


def row_group_pieces(files: list[str]) -> list[dict]:
    """One read piece per Parquet row group, with the input position of its first row."""
    pieces, first = [], 0
    for path in files:
        metadata = pq.read_metadata(path)
        for group in range(metadata.num_row_groups):
            pieces.append({"path": path, "row_group": group, "first_row": first})
            first += metadata.row_group(group).num_rows
    return pieces


def read_pieces(pieces: pa.Table, columns: list[str]) -> pa.Table:
    """Ray Data map: row groups -> their rows with `ROW`, each row's position in the whole input."""
    tables = []
    listed = (pieces.column(name).to_pylist() for name in ("path", "row_group", "first_row"))
    for path, group, first in zip(*listed, strict=True):
        table = pq.ParquetFile(path).read_row_group(group, columns=columns)
        tables.append(table.append_column(ROW, pa.array(np.arange(first, first + table.num_rows, dtype=np.int64))))
    return pa.concat_tables(tables)


class RowOrderedParquet(Datasink):
    """Writes each run of consecutive input rows a write task holds to `part-<first row>.parquet`.

    Ray Data 2.60 with `preserve_order` still hands its own write tasks blocks out of input order (seen here: a
    single output file with whole 64/256-row blocks swapped), so order is carried by the rows instead: each row's
    input position (`ROW`) travels through the pipeline, every write task sorts its rows by it and cuts them
    where positions jump. File names sort in input order whatever order the blocks arrived in."""

    def __init__(self, directory: Path, rows_per_write: int = 65_536):
        self.directory = directory
        self.rows_per_write = rows_per_write
        self.rows_written = 0

    @property
    def min_rows_per_write(self) -> int:
        """Rows Ray Data gathers for one write task (so files are per run of at least this many rows)."""
        return self.rows_per_write

    def on_write_complete(self, write_result) -> None:
        """On the driver, after every write task: the rows written (skipped rows not counted)."""
        self.rows_written = int(sum(write_result.write_returns))  # Ray hands them back as numpy ints

    def write(self, blocks, ctx) -> int:
        from ray.data.block import BlockAccessor

        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        tables = [table for table in tables if table.num_rows]
        if not tables:
            return 0
        table = pa.concat_tables(tables).sort_by(ROW)
        rows = table.column(ROW).to_numpy()
        cuts = [0, *(np.flatnonzero(np.diff(rows) != 1) + 1).tolist(), len(rows)]
        self.directory.mkdir(parents=True, exist_ok=True)
        written = 0
        for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
            run = table.slice(start, stop - start)
            run = run.filter(pc.invert(run.column(SKIP))).drop_columns([ROW, SKIP])
            if run.num_rows:
                pq.write_table(run, self.directory / f"part-{rows[start]:012d}.parquet")
                written += run.num_rows
        return written


def run_embedding(plan: EmbedPlan) -> dict:
    """Read -> embed -> write on the current Ray cluster, staged and swapped into place; returns the summary."""
    import ray
    import ray.data

    started = time.perf_counter()
    options, output = plan.options, plan.output
    job = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    staging = output.with_name(f"{output.name}.partial-{job}")  # unique: a concurrent job has its own
    columns = list(dict.fromkeys([options.text_column, *options.keep_columns]))
    pieces = ray.data.from_items(plan.pieces, override_num_blocks=max(1, min(len(plan.pieces), 1024)))
    rows = pieces.map_batches(read_pieces, fn_kwargs={"columns": columns}, batch_size=1, batch_format="pyarrow")
    embedded = rows.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={"options": options},
        batch_size=options.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor or None,
    )
    try:
        sink = RowOrderedParquet(staging)
        embedded.write_datasink(sink)
        staging.mkdir(parents=True, exist_ok=True)  # all rows skipped: an empty output, still marked
        summary = {
            "rows_in": plan.counts["rows_in"],
            "rows_out": sink.rows_written,
            "skipped": plan.counts["skipped"],
            "output": str(output),
            "files_in": len(plan.files),
            "precision": options.precision,
            "model": options.model,
            "job": job,
        }
        (staging / OUTPUT_MARKER).write_text(json.dumps(summary, indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        print(f"embedding failed: nothing written to {output} (staging {staging} removed)", flush=True)
        raise
    if output.exists():  # empty, or an earlier job's output with --overwrite (check_output refused anything else)
        previous = output.with_name(f"{output.name}.replaced-{job}")
        output.rename(previous)  # whole directories swap: the old output is never half-replaced
        staging.rename(output)
        shutil.rmtree(previous)
    else:
        staging.rename(output)
    seconds = time.perf_counter() - started
    return summary | {"seconds": round(seconds, 3), "rows_per_s": round(summary["rows_out"] / seconds, 1)}
