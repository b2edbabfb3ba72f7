"""Offline embedding/scoring on Ray Data: Parquet in -> `ExportedModel` on an actor pool -> Parquet out.

The pre-flight reads only the schemas and the text columns of each input file, so a wrong column,
a wrong type or (with `on_empty="error"`) a null/empty text is reported with its file and row before
any Ray work starts. With `text_pair_column`, each row is also a pair (text, text_pair) for the export's pair
tasks; embeddings stay those of `text_column`. Output goes to a staging directory renamed into place at the end: a
failed run leaves nothing that looks finished.

Every output says which encoder made it: each file's schema metadata holds the export version (`mtl.export_id`), the
encoder fingerprint (`mtl.encoder_fingerprint`) and the settings that shape a vector (`mtl.embedding`), and each row
its `embedding_fingerprint` and `embedding_text_hash`. With `incremental`, rows whose text hash is in the previous
output with this encoder's fingerprint and the same settings take their stored vector; only the others are embedded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.data import Datasink

from mtl.config import PAIR_TYPES
from mtl.data.contract import DataError, check_utf8, expand_paths, read_schema
from mtl.errors import UserError
from mtl.export_format import UnknownTask, export_id, read_manifest, select_tasks, task_info

# Written into every finished output: what made it. `--overwrite` replaces only a directory that holds one.
OUTPUT_MARKER = "_jobs_embed.json"
ROW = "__row"  # each row's position in the whole input, carried to the writer (not written)
SKIP = "__skip"  # an empty text skipped under --on-empty skip: kept in the stream until written, then dropped
REUSED = "__reused"  # --incremental: the row's vector stored in the previous output (null: embed the row)
FINGERPRINT = "embedding_fingerprint"  # per row: the encoder fingerprint (export manifest) its embedding came from
# Rows per forward pass. A Ray batch of 1,024 rows sorted by length pads less than one of 256, and 32-48 rows per
# forward ran ~10 % faster than 64 in bf16 on this 2-core AMX CPU (52-word-piece texts: 325-406 vs 345-349 texts/s).
FORWARD_ROWS = 32
LIGHT_TASK_CPUS = 0.25
TEXT_HASH = "embedding_text_hash"  # per row: the first 16 bytes of sha256 of the embedded text, --incremental's key
OUTPUT_COLUMNS = ("embedding", FINGERPRINT, TEXT_HASH)  # written by the job, never copied from the input
ROW_GROUP_ROWS = 8_192  # output row groups: a later --incremental run reads only the groups holding reused vectors


class OutputError(UserError):
    """An `--output` that cannot be written without risking data that is not this job's."""


class EmbedOptions(BaseModel):
    """The batch job's options (`jobs.embed --help` documents each flag); a bad value names its flag."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    inputs: list[str]
    output: str
    text_column: str = "text"
    text_pair_column: str | None = None  # the second text of each row, for pair tasks
    keep_columns: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)  # [] embeddings only, ["all"] every task the inputs allow, or names
    normalize: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"
    batch_size: int = Field(1024, ge=1)  # rows per Ray Data batch; sorted by length, encoded FORWARD_ROWS at a time
    actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0)
    threads: int | None = Field(None, ge=1)  # torch threads per actor (default: the node's cores / actors)
    gpus_per_actor: float = Field(0.0, ge=0)
    on_empty: Literal["error", "skip"] = "error"
    overwrite: bool = False
    incremental: bool = False  # reuse the previous output's vectors of unchanged texts embedded by this encoder
    previous: str | None = None  # the earlier output --incremental reads (default: --output itself)

    @model_validator(mode="after")
    def _consistent(self) -> EmbedOptions:
        if self.text_pair_column is not None and self.text_pair_column == self.text_column:
            raise ValueError(f"text_pair_column: {self.text_pair_column!r} is the text column; name the second text's")
        clashes = [name for name in self.keep_columns if name in OUTPUT_COLUMNS]
        if clashes:
            raise ValueError(f"keep_columns: {clashes} are columns the job writes itself; rename them in the input")
        if self.previous is not None and not self.incremental:
            raise ValueError("previous: --previous is the earlier output --incremental reads; pass --incremental too")
        if self.incremental and self.tasks:
            raise ValueError("tasks: --incremental reuses stored embeddings only (task outputs need un-normalised "
                             "vectors and the heads); score --tasks in a run without --incremental")  # fmt: skip
        return self


def empty_mask(texts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """True where a text is null or only whitespace."""
    stripped = pc.utf8_trim_whitespace(texts)
    return pc.fill_null(pc.equal(pc.utf8_length(stripped), 0), True).to_numpy(zero_copy_only=False)


def text_columns(options: EmbedOptions) -> dict[str, str]:
    """The string columns every row needs -> the reason a null/empty one is counted under."""
    columns = {options.text_column: "empty_text"}
    if options.text_pair_column:
        columns[options.text_pair_column] = "empty_text_pair"
    return columns


def check_inputs(options: EmbedOptions) -> tuple[list[str], dict]:
    """Check every input file's columns and texts (and second texts); return the files and row counts (in, skipped
    by reason; a row empty in both text columns counts once, under its text's reason)."""
    files = expand_paths(options.inputs, "--input")
    counts = {"rows_in": 0, "skipped": {}}
    columns = text_columns(options)
    needed = [*columns, *options.keep_columns]
    for path in files:
        schema = read_schema(path, "--input")
        missing = [name for name in needed if name not in schema.names]
        if missing:
            raise DataError(f"{path}: no column(s) {missing} (has {schema.names}); see --text-column/"
                            "--text-pair-column/--keep-columns")  # fmt: skip
        for column in columns:
            text_type = schema.field(column).type
            if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
                raise DataError(f"{path}: column {column!r} is {text_type}, expected string")
        empties = {column: empty_mask(read_text_column(path, column)) for column in columns}
        counted = np.zeros(len(empties[options.text_column]), dtype=bool)
        counts["rows_in"] += len(counted)
        for column, empty in empties.items():
            if empty.any() and options.on_empty == "error":
                rows = np.flatnonzero(empty)[:5].tolist()
                raise DataError(
                    f"{path}: {int(empty.sum())} null or empty text(s) in column {column!r} "
                    f"(rows {rows}{'...' if empty.sum() > 5 else ''}); pass --on-empty skip to drop and count them"
                )
            fresh = int((empty & ~counted).sum())  # a row empty in both columns counts once
            if fresh:
                counts["skipped"][columns[column]] = counts["skipped"].get(columns[column], 0) + fresh
            counted |= empty
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


def text_hashes(texts: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Each text's key for --incremental: the first 16 bytes of sha256 of its UTF-8 (null for a null text). A vector
    depends on the text and the encoder only, so equal texts share a stored vector whatever their row."""
    digests = [None if text is None else hashlib.sha256(text.encode()).digest()[:16] for text in texts.to_pylist()]
    return pa.array(digests, pa.binary(16))


def embedding_settings(manifest: dict, options: EmbedOptions) -> dict:
    """What besides the encoder's weights shapes a stored vector: a row written under other settings is not reused."""
    return {
        "pooling": manifest["pooling"],
        "max_seq_length": int(manifest["max_seq_length"]),
        "dim": int(manifest["hidden_size"]),
        "normalize": options.normalize,
        "precision": options.precision,
    }


def fixed_rows(vectors: pa.FixedSizeListArray, dim: int) -> np.ndarray:
    """`(rows, dim)` float32 of a fixed-size list array, null rows included as their (unused) slots."""
    flat = vectors.values.slice(vectors.offset * dim, len(vectors) * dim)
    return flat.to_numpy(zero_copy_only=False).reshape(len(vectors), dim)


def resolve_tasks(manifest: dict, options: EmbedOptions) -> list[str]:
    """--tasks: [] -> no scoring; ["all"] -> every task the inputs allow (pair tasks only with --text-pair-column);
    else names checked against the export's tasks (a pair task needs --text-pair-column)."""
    if not options.tasks:
        return []
    info = task_info(manifest)
    if options.tasks == ["all"]:
        return [name for name, item in info.items() if options.text_pair_column or item["type"] not in PAIR_TYPES]
    try:
        tasks = select_tasks(list(info), options.tasks)
    except UnknownTask as error:
        raise UnknownTask(f"--tasks: {error}") from error
    unpaired = [f"{name!r} ({info[name]['type']})" for name in tasks if info[name]["type"] in PAIR_TYPES]
    if unpaired and not options.text_pair_column:
        raise UserError(f"--tasks: {', '.join(unpaired)} score two texts per row; name the column of the second "
                        "text with --text-pair-column")  # fmt: skip
    return tasks


def task_columns(task: str, info: dict, outputs: np.ndarray) -> dict[str, pa.Array]:
    """One task's output columns for a batch, by type (`info`: its `task_info` entry): classification and
    pair_classification `<task>_label`, `_label_id`, `_score` (the label's probability); similarity `<task>_score`
    (on the task's score_range) and `_cosine`; multilabel `<task>_labels` (the chosen ones) and `_probabilities`
    (every label's, in label order)."""
    from mtl.inference.exported_model import chosen_labels, similarity_scores

    kind, names = info["type"], np.asarray(info["labels"], dtype=object)
    if kind == "similarity":
        scores = similarity_scores(outputs, info["score_range"]).astype(np.float32)
        return {f"{task}_score": pa.array(scores), f"{task}_cosine": pa.array(outputs.astype(np.float32))}
    if kind == "multilabel":
        chosen = chosen_labels(outputs, info["thresholds"])
        width = outputs.shape[1]
        return {
            f"{task}_labels": pa.array([names[row].tolist() for row in chosen], pa.list_(pa.string())),
            f"{task}_probabilities": pa.FixedSizeListArray.from_arrays(
                pa.array(outputs.astype(np.float32).reshape(-1)), width
            ).cast(pa.list_(pa.float32())),
        }
    ids = outputs.argmax(axis=1)
    return {
        f"{task}_label": pa.array(names[ids].tolist(), pa.string()),
        f"{task}_label_id": pa.array(ids.astype(np.int32)),
        f"{task}_score": pa.array(outputs.max(axis=1).astype(np.float32)),
    }


class EmbedBatch:
    """The Ray Data callable: one `ExportedModel` per actor, pyarrow batches in and out.

    Rows keep their input position (`ROW`) and stay in the batch even when skipped (`SKIP`, a null embedding), so
    the writer can tell consecutive input rows from a gap (`RowOrderedParquet`). In the job's pipeline (rows with
    `ROW`) each row also gets `FINGERPRINT` and keeps its `TEXT_HASH`; a row with a stored vector (`REUSED`, from
    --incremental) takes it unchanged and is not encoded."""

    def __init__(self, options: EmbedOptions):
        import torch  # in the actor only: the driver's pre-flight needs no torch

        from mtl.inference.exported_model import ExportedModel, normalize_rows

        self.normalize_rows = normalize_rows
        # Ray sets OMP_NUM_THREADS to the actor's num_cpus (1), so torch would use one core of a 2-core node while
        # the reads and writes beside it are idle most of the time: default = the node's cores / actors.
        torch.set_num_threads(options.threads or max(1, (os.cpu_count() or 1) // options.actors))
        device = "cuda" if options.gpus_per_actor > 0 else "cpu"
        self.model = ExportedModel.load(options.model, device=device, precision=options.precision)
        self.options = options
        self.tasks = resolve_tasks(self.model.manifest, options)
        self.fingerprint = self.model.manifest.get("encoder_fingerprint")

    def __call__(self, batch: pa.Table) -> pa.Table:
        options = self.options
        texts = [batch.column(name) for name in text_columns(options)]  # text, and text_pair with pairs
        skip = np.logical_or.reduce([empty_mask(column) for column in texts])  # refused in pre-flight unless "skip"
        reused = batch.column(REUSED).combine_chunks() if REUSED in batch.column_names else None
        stored = ~skip & reused.is_valid().to_numpy(zero_copy_only=False) if reused is not None else np.zeros_like(skip)
        assert not (stored.any() and self.tasks), "--incremental with --tasks (refused by EmbedOptions)"
        keep = np.flatnonzero(~skip & ~stored)
        pooled = np.zeros((len(texts), batch.num_rows, self.model.dim), dtype=np.float32)  # (columns, B, H)
        if len(keep):
            kept = [text for column in texts for text in column.take(pa.array(keep)).to_pylist()]
            encoded = self.model.encode(kept, batch_size=FORWARD_ROWS).numpy()  # (columns * kept, H): length-sorted
            pooled[:, keep] = encoded.reshape(len(texts), len(keep), -1)
        vectors = self.normalize_rows(pooled[0]) if options.normalize else pooled[0]  # skipped rows stay zero
        if stored.any():
            vectors[stored] = fixed_rows(reused, self.model.dim)[stored]  # bit for bit what the previous job wrote
        columns = {name: batch.column(name) for name in options.keep_columns}
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1)), self.model.dim, mask=pa.array(skip)
        )
        outputs = self.model.outputs(self.tasks, pooled[0], pooled[1] if len(texts) > 1 else None)
        for task in self.tasks:
            columns.update(task_columns(task, self.model.info[task], outputs[task]))
        if ROW in batch.column_names:
            columns[FINGERPRINT] = pa.array([self.fingerprint] * batch.num_rows, pa.string())  # Parquet dictionary-
            columns[TEXT_HASH] = batch.column(TEXT_HASH)  # encodes the repeated string: a few bytes per file
            columns[ROW] = batch.column(ROW)
            columns[SKIP] = pa.array(skip)
        return pa.table(columns)


@dataclass
class Reuse:
    """--incremental's plan: the previous output's files (each piece's `reuse` entries index them) and counts."""

    previous: Path
    files: list[str]
    rows: int  # rows of the previous output
    reusable: int  # of them, rows embedded by this encoder under the same settings
    reused: int  # input rows that take a stored vector (the rest not skipped are embedded)


@dataclass
class EmbedPlan:
    """What the pre-flight found: files, row counts, the row groups to read, the output and the pinned export (its
    version directory's name, encoder fingerprint and vector settings), and --incremental's reuse plan."""

    options: EmbedOptions
    files: list[str]
    counts: dict
    pieces: list[dict]
    output: Path
    export_id: str = ""
    fingerprint: str | None = None
    settings: dict = field(default_factory=dict)
    reuse: Reuse | None = None


def plan_embedding(options: EmbedOptions) -> EmbedPlan:
    """Everything checkable without Ray, before Ray starts: inputs (footers and text columns), the export's
    manifest and tasks, the output path, and with --incremental the previous output and which rows reuse it.
    Errors name the flag, file, row or column."""
    files, counts = check_inputs(options)
    manifest = read_manifest(options.model)
    resolve_tasks(manifest, options)  # bad names fail here, no weights read
    output = check_output(options, files)
    # Pin the export version this job reads (a published export is a symlink a new training run may move on).
    options = options.model_copy(update={"model": str(Path(options.model).resolve())})
    pieces = row_group_pieces(files)
    fingerprint, settings = manifest.get("encoder_fingerprint"), embedding_settings(manifest, options)
    reuse = plan_reuse(options, files, pieces, fingerprint, settings, output) if options.incremental else None
    return EmbedPlan(options, files, counts, pieces, output, export_id(options.model), fingerprint, settings, reuse)


def plan_reuse(
    options: EmbedOptions, files: list[str], pieces: list[dict], fingerprint: str | None, settings: dict, output: Path
) -> Reuse:
    """Match every input row's text hash against the previous output's rows written by this encoder (fingerprint)
    under the same settings; add to each piece its `reuse` entries, int64 triples (row in the piece, previous file,
    row in that file) as bytes. Reads only the previous output's hash and fingerprint columns."""
    flag = "--previous" if options.previous else "--output (--incremental's previous output when no --previous)"
    previous = Path(options.previous or options.output).expanduser().resolve()
    if fingerprint is None:
        raise UserError(f"--incremental: the export {options.model} records no encoder_fingerprint (written before "
                        "fingerprints); re-export it or run without --incremental")  # fmt: skip
    if previous != output and previous in output.parents:
        raise OutputError(f"--output {output}: inside {flag} {previous}; write the new output beside it")
    if not (previous / OUTPUT_MARKER).is_file():
        raise OutputError(f"{flag} {previous}: not an output of jobs.embed (no {OUTPUT_MARKER}); --incremental reuses "
                          "an earlier job's output: run without --incremental first")  # fmt: skip
    stored = sorted(str(path) for path in previous.glob("*.parquet"))
    keys, places, rows = [], [], 0
    for index, path in enumerate(stored):
        schema = pq.read_schema(path)
        missing = [name for name in OUTPUT_COLUMNS if name not in schema.names]
        if missing:
            raise OutputError(f"{path}: no column(s) {missing} (written before jobs.embed recorded them); run once "
                              "without --incremental")  # fmt: skip
        table = pq.read_table(path, columns=[FINGERPRINT, TEXT_HASH])
        rows += table.num_rows
        if json.loads((schema.metadata or {}).get(b"mtl.embedding", b"{}")) != settings:
            continue  # another pooling, length, normalisation or precision: its vectors are not this job's
        fresh = pc.and_(pc.equal(table.column(FINGERPRINT), fingerprint), pc.is_valid(table.column(TEXT_HASH)))
        at = np.flatnonzero(pc.fill_null(fresh, False).to_numpy(zero_copy_only=False))
        keys.append(table.column(TEXT_HASH).take(pa.array(at)).combine_chunks())
        places.append(np.stack([np.full(len(at), index), at], axis=1))
    stored_keys = pa.concat_arrays(keys) if keys else pa.array([], pa.binary(16))
    places = np.concatenate(places) if places else np.zeros((0, 2), dtype=np.int64)
    found = []
    for path in files:  # each input row -> its first stored match, -1 for none or a row skipped as empty
        texts = {column: read_text_column(path, column) for column in text_columns(options)}
        skip = np.logical_or.reduce([empty_mask(column) for column in texts.values()])
        matches = pc.index_in(text_hashes(texts[options.text_column]), value_set=stored_keys)
        matches = matches.to_numpy(zero_copy_only=False)  # NaN (floats) where a text has no match
        found.append(np.where(skip, -1, np.nan_to_num(matches, nan=-1)).astype(np.int64))
    found = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    ends = [piece["first_row"] for piece in pieces[1:]] + [len(found)]
    for piece, end in zip(pieces, ends, strict=True):
        match = found[piece["first_row"] : end]
        local = np.flatnonzero(match >= 0)
        piece["reuse"] = np.column_stack([local, places[match[local]]]).astype(np.int64).tobytes()
    reused = int((found >= 0).sum())
    return Reuse(previous, stored, rows, len(places), reused)


def row_group_pieces(files: list[str]) -> list[dict]:
    """One read piece per Parquet row group, with the input position of its first row."""
    pieces, first = [], 0
    for path in files:
        metadata = pq.read_metadata(path)
        for group in range(metadata.num_row_groups):
            pieces.append({"path": path, "row_group": group, "first_row": first})
            first += metadata.row_group(group).num_rows
    return pieces


def read_pieces(
    pieces: pa.Table, columns: list[str], text_column: str, previous: list[str] | None = None, dim: int = 0
) -> pa.Table:
    """Ray Data map: row groups -> their rows with `ROW`, each row's position in the whole input, and `TEXT_HASH`;
    with `previous` (--incremental's stored files) also `REUSED`, the stored vector of each row that has one."""
    tables = []
    listed = [pieces.column(name).to_pylist() for name in ("path", "row_group", "first_row")]
    reuse = pieces.column("reuse").to_pylist() if previous is not None else [None] * pieces.num_rows
    for path, group, first, entries in zip(*listed, reuse, strict=True):
        table = pq.ParquetFile(path).read_row_group(group, columns=columns)
        table = table.append_column(ROW, pa.array(np.arange(first, first + table.num_rows, dtype=np.int64)))
        table = table.append_column(TEXT_HASH, text_hashes(table.column(text_column)))
        if previous is not None:
            entries = np.frombuffer(entries, dtype=np.int64).reshape(-1, 3)
            table = table.append_column(REUSED, stored_vectors(previous, entries, table.num_rows, dim))
        tables.append(table)
    return pa.concat_tables(tables)


def stored_vectors(files: list[str], entries: np.ndarray, rows: int, dim: int) -> pa.FixedSizeListArray:
    """`rows` vectors, null except at the rows `entries` (row, file, row in file) take from the stored `files`;
    reads only the row groups holding them."""
    vectors, found = np.zeros((rows, dim), dtype=np.float32), np.zeros(rows, dtype=bool)
    for index in np.unique(entries[:, 1]):
        wanted = entries[entries[:, 1] == index]
        parquet = pq.ParquetFile(files[index])
        sizes = [parquet.metadata.row_group(group).num_rows for group in range(parquet.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        groups = np.searchsorted(starts, wanted[:, 2], side="right") - 1
        for group in np.unique(groups):
            taken = wanted[groups == group]
            stored = parquet.read_row_group(int(group), columns=["embedding"]).column("embedding").combine_chunks()
            vectors[taken[:, 0]] = fixed_rows(stored, dim)[taken[:, 2] - starts[group]]
            found[taken[:, 0]] = True
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim, mask=pa.array(~found))


class RowOrderedParquet(Datasink):
    """Writes each run of consecutive input rows a write task holds to `part-<first row>.parquet`.

    Ray Data 2.60 with `preserve_order` still hands its own write tasks blocks out of input order (seen here: a
    single output file with whole 64/256-row blocks swapped), so order is carried by the rows instead: each row's
    input position (`ROW`) travels through the pipeline, every write task sorts its rows by it and cuts them
    where positions jump. File names sort in input order whatever order the blocks arrived in. `metadata` goes into
    every file's schema metadata (what made the output)."""

    def __init__(self, directory: Path, rows_per_write: int = 65_536, metadata: dict[str, str] | None = None):
        self.directory = directory
        self.rows_per_write = rows_per_write
        self.metadata = metadata or {}
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
                if self.metadata:
                    run = run.replace_schema_metadata({**(run.schema.metadata or {}), **self.metadata})
                pq.write_table(run, self.directory / f"part-{rows[start]:012d}.parquet", row_group_size=ROW_GROUP_ROWS)
                written += run.num_rows
        return written


def output_metadata(plan: EmbedPlan) -> dict[str, str]:
    """Each output file's schema metadata: the export version, its encoder fingerprint, the vector settings."""
    return {
        "mtl.export_id": plan.export_id,
        "mtl.encoder_fingerprint": plan.fingerprint or "",
        "mtl.embedding": json.dumps(plan.settings, sort_keys=True),
    }


def run_embedding(plan: EmbedPlan) -> dict:
    """Read -> embed -> write on the current Ray cluster, staged and swapped into place; returns the summary."""
    import ray
    import ray.data

    started = time.perf_counter()
    options, output = plan.options, plan.output
    job = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    staging = output.with_name(f"{output.name}.partial-{job}")  # unique: a concurrent job has its own
    columns = list(dict.fromkeys([*text_columns(options), *options.keep_columns]))
    pieces = ray.data.from_items(plan.pieces, override_num_blocks=max(1, min(len(plan.pieces), 1024)))
    reading = {"columns": columns, "text_column": options.text_column}
    if plan.reuse:
        reading |= {"previous": plan.reuse.files, "dim": plan.settings["dim"]}
    # Reads and writes are light beside the encoder: a quarter CPU each, so on a small node neither waits for a whole
    # free CPU while the actor holds one (a read holding the other stalled the writes, and so the actor).
    light = {"num_cpus": LIGHT_TASK_CPUS}
    rows = pieces.map_batches(read_pieces, fn_kwargs=reading, batch_size=1, batch_format="pyarrow", **light)
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
        sink = RowOrderedParquet(staging, metadata=output_metadata(plan))
        embedded.write_datasink(sink, ray_remote_args=light)
        staging.mkdir(parents=True, exist_ok=True)  # all rows skipped: an empty output, still marked
        reused = plan.reuse.reused if plan.reuse else 0
        summary = {
            "rows_in": plan.counts["rows_in"],
            "rows_out": sink.rows_written,
            "rows_reused": reused,
            "rows_embedded": sink.rows_written - reused,
            "skipped": plan.counts["skipped"],
            "output": str(output),
            "files_in": len(plan.files),
            "precision": options.precision,
            "model": options.model,
            "export_id": plan.export_id,
            "encoder_fingerprint": plan.fingerprint,
            "job": job,
        }
        if plan.reuse:
            summary["previous"] = {"output": str(plan.reuse.previous), "rows": plan.reuse.rows,
                                   "reusable": plan.reuse.reusable}  # fmt: skip
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
