"""Offline embedding/scoring on Ray Data: Parquet in -> `ExportedModel` on an actor pool -> Parquet out.

The pre-flight reads only the schemas and the text column of each input file, so a wrong column,
a wrong type or (with `on_empty="error"`) a null/empty text is reported with its file and row before
any Ray work starts. Output goes to a staging directory renamed into place at the end: a failed run
leaves nothing that looks finished.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from mtl.data.contract import DataError, expand_paths
from mtl.inference.manifest import read_manifest, select_tasks


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
        schema = pq.read_schema(path)
        missing = [name for name in needed if name not in schema.names]
        if missing:
            raise DataError(f"{path}: no column(s) {missing} (has {schema.names}); see --text-column/--keep-columns")
        text_type = schema.field(options.text_column).type
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
            raise DataError(f"{path}: column {options.text_column!r} is {text_type}, expected string")
        texts = pq.read_table(path, columns=[options.text_column]).column(options.text_column)
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
    output = Path(options.output)
    if output.exists() and any(output.iterdir()) and not options.overwrite:
        raise FileExistsError(f"--output {output} exists and is not empty; pass --overwrite to replace it")
    return files, counts


def resolve_tasks(known: list[str], tasks: list[str]) -> list[str]:
    """[] -> no scoring; ["all"] -> every task of the export; else names checked against the export's tasks."""
    if not tasks:
        return []
    try:
        return select_tasks(known, None if tasks == ["all"] else tasks)
    except ValueError as error:
        raise ValueError(f"--tasks: {error}") from error


class EmbedBatch:
    """The Ray Data callable: one `ExportedModel` per actor, pyarrow batches in and out."""

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
        keep = ~empty_mask(texts)  # pre-flight already refused empties unless on_empty == "skip"
        if not keep.all():
            batch = batch.filter(pa.array(keep))
            texts = batch.column(options.text_column)
        pooled = self.model.encode(texts.to_pylist(), batch_size=64).numpy()  # (B, H) float32
        vectors = self.normalize_rows(pooled) if options.normalize else pooled
        dim = vectors.shape[1]
        columns = {name: batch.column(name) for name in options.keep_columns}
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
        if self.tasks:
            probabilities = self.model.head_probabilities(pooled, self.tasks)
            for task in self.tasks:
                ids = probabilities[task].argmax(axis=1)
                names = np.asarray(self.model.labels[task], dtype=object)
                columns[f"{task}_label"] = pa.array(names[ids].tolist(), pa.string())
                columns[f"{task}_label_id"] = pa.array(ids.astype(np.int32))
                columns[f"{task}_score"] = pa.array(probabilities[task].max(axis=1).astype(np.float32))
        return pa.table(columns)


def run_embedding(options: EmbedOptions) -> dict:
    """Pre-flight, then read -> embed -> write on the current Ray cluster; returns the summary."""
    import ray
    import ray.data

    started = time.perf_counter()
    files, counts = check_inputs(options)
    # Bad model or task: fail before any Ray work, without loading weights.
    resolve_tasks(list(read_manifest(options.model)["tasks"]), options.tasks)
    # Pin the export version this job reads (a published export is a symlink a new training run may move on).
    options = options.model_copy(update={"model": str(Path(options.model).resolve())})
    output = Path(options.output).resolve()
    job = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    staging = output.with_name(f"{output.name}.partial-{job}")  # unique: a concurrent job has its own
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # output rows in input order
    dataset = ray.data.read_parquet(files, columns=[options.text_column, *options.keep_columns])
    embedded = dataset.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={"options": options},
        batch_size=options.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor or None,
    )
    try:
        embedded.write_parquet(str(staging))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        print(f"embedding failed: nothing written to {output} (staging {staging} removed)", flush=True)
        raise
    if output.exists():  # only reached with --overwrite (pre-flight refused otherwise)
        previous = output.with_name(f"{output.name}.replaced-{job}")
        output.rename(previous)  # whole directories swap: the old output is never half-replaced
        staging.rename(output)
        shutil.rmtree(previous)
    else:
        staging.rename(output)
    rows_out = sum(pq.read_metadata(path).num_rows for path in sorted(output.glob("*.parquet")))
    seconds = time.perf_counter() - started
    return {
        "rows_in": counts["rows_in"],
        "rows_out": rows_out,
        "skipped": counts["skipped"],
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows_out / seconds, 1),
        "output": str(output),
        "files_in": len(files),
        "precision": options.precision,
    }
