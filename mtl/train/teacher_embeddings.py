"""Teacher embeddings for the `distill` retention term, computed once per dataset with Ray Data and cached on disk.

The clean training rows go through an actor pool holding the frozen starting encoder (the same `build_model`,
tokenisation, pooling and precision as the online teacher in the recipe), and are written as Parquet with a
`teacher` column: `<cache root>/<key>/`. The key hashes everything that determines the vectors: the starting
encoder's files (weights, tokenizer, pooling config), the resolved pooling, `model.max_seq_length`, the precision,
and the bytes of every training file with the columns read from it. A second run on the same data reuses the
directory; any change makes a new key, so a stale cache is never read. A cache is written to a staging directory
and renamed into place with a `_COMPLETE.json` marker; one without the marker, or whose row count or vector size
disagrees with it, is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtl.config import Config

CACHE_FORMAT = 3  # 2: rows carry their source `row_id` (resume leaves out the same rows as without a cache);
# 3: pair rows carry `teacher_pair`, the second text's vector (zeros for single-text rows)
MARKER = "_COMPLETE.json"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def encoder_fingerprint(directory: Path) -> str:
    """sha256 over every file of the starting encoder's directory (weights, tokenizer, pooling), by relative path."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(directory)}:{file_digest(path)}\n".encode())
    return digest.hexdigest()


def cache_key(config: Config, files: list[str]) -> dict:
    """Everything the teacher vectors depend on; its hash names the cache directory."""
    from mtl.model.backbone import starting_encoder_dir
    from mtl.model.pooling import resolve_pooling

    encoder_dir = starting_encoder_dir(config.model)
    data = config.data
    return {
        "format": CACHE_FORMAT,
        "encoder": encoder_fingerprint(encoder_dir),
        "pooling": resolve_pooling(config.model.pooling, encoder_dir),
        "max_seq_length": config.model.max_seq_length,
        "precision": config.train.precision,
        "columns": [
            data.text_column,
            data.task_column,
            data.label_column,
            data.text_pair_column,
            data.score_column,
            data.labels_column,
            data.on_bad_rows,
        ],  # fmt: skip
        "sources": [source.model_dump(mode="json") for source in data.sources],
        "tasks": {
            name: task.model_dump(mode="json", include={"type", "labels", "score_range"})
            for name, task in config.tasks.items()
        },  # fmt: skip
        "files": [file_digest(Path(path)) for path in files],
    }


def default_cache_root(config: Config) -> Path:
    return Path(config.retain.teacher_cache or Path(config.run.storage_path) / "teacher_cache").expanduser().resolve()


class TeacherEmbedder:
    """Ray Data actor: clean rows in, the same rows with their `teacher` pooled vector (float32) out, and for pair
    rows `teacher_pair`, the second text's (zeros for single-text rows)."""

    def __init__(self, config_json: str, threads: int | None):
        import torch

        from mtl.config import validate_config
        from mtl.model.backbone import load_tokenizer, starting_encoder_dir
        from mtl.model.multitask import build_model
        from mtl.train.retention import Teacher

        if threads:
            torch.set_num_threads(threads)
        config = validate_config(json.loads(config_json), source="teacher cache config")
        device = torch.device("cuda" if config.scaling.use_gpu and torch.cuda.is_available() else "cpu")
        self.teacher = Teacher(build_model(config), config.train.precision, device)
        self.tokenizer = load_tokenizer(config.model, starting_encoder_dir(config.model))
        self.max_seq_length, self.device = config.model.max_seq_length, device

    def __call__(self, batch: pa.Table) -> pa.Table:
        from mtl.data.tokenization import pooled_in_input_order, token_ids

        ids = token_ids(self.tokenizer, batch.column("text").to_pylist(), self.max_seq_length)
        vectors = pooled_in_input_order(self.teacher, self.tokenizer, ids, 64, self.device).cpu().numpy()  # (B, H)
        dim = vectors.shape[1]
        pairs = batch.column("text_pair").to_pylist()
        with_pair = [row for row, text in enumerate(pairs) if text is not None]
        pair_vectors = np.zeros_like(vectors)
        if with_pair:
            pair_ids = token_ids(self.tokenizer, [pairs[row] for row in with_pair], self.max_seq_length)
            pooled = pooled_in_input_order(self.teacher, self.tokenizer, pair_ids, 64, self.device).cpu().numpy()
            pair_vectors[with_pair] = pooled
        for name, values in (("teacher", vectors), ("teacher_pair", pair_vectors)):
            batch = batch.append_column(name, pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim))
        return batch


def complete(directory: Path, rows: int) -> dict | None:
    """The cache's marker if the directory holds a finished cache of `rows` rows, else None."""
    marker = directory / MARKER
    if not marker.is_file():
        return None
    recorded = json.loads(marker.read_text())
    parts = sorted(directory.glob("*.parquet"))
    if recorded.get("rows") != rows or sum(pq.read_metadata(part).num_rows for part in parts) != rows:
        return None
    return recorded


def teacher_embeddings(files: list[str], config: Config, rows: int) -> tuple[list[str], bool]:
    """Parquet files of the clean training rows with a `teacher` column: (files, reused). Builds them if needed.

    `rows` is the clean row count of the pre-flight; a cache holding another count is rebuilt.
    """
    import ray.data

    from mtl.data.ray_datasets import DATA_TASK_CPUS, read_rows

    key = cache_key(config, files)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    directory = default_cache_root(config) / name
    if complete(directory, rows):
        print(f"teacher embeddings: reusing {directory} ({rows} rows)", flush=True)
        return [str(part) for part in sorted(directory.glob("*.parquet"))], True
    if directory.exists():
        print(f"teacher embeddings: {directory} is incomplete or does not match the data; rebuilding", flush=True)
        shutil.rmtree(directory)
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    scaling = config.scaling
    embedded = read_rows(files, config, row_ids=True).map_batches(
        TeacherEmbedder,
        fn_constructor_kwargs={"config_json": config.model_dump_json(), "threads": scaling.torch_threads},
        batch_size=1024,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=max(scaling.cpus_per_worker, DATA_TASK_CPUS),
        num_gpus=1 if scaling.use_gpu else None,
    )
    print(f"teacher embeddings: computing {rows} rows into {directory}", flush=True)
    try:
        embedded.write_parquet(str(staging))
        built = sum(pq.read_metadata(part).num_rows for part in staging.glob("*.parquet"))
        if built != rows:
            raise RuntimeError(f"teacher embeddings: wrote {built} rows, the pre-flight counted {rows}")
        (staging / MARKER).write_text(json.dumps({"rows": rows, "key": key}, indent=2))
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [str(part) for part in sorted(directory.glob("*.parquet"))], False
