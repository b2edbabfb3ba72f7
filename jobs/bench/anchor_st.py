"""sentence-transformers' own CPU recipes timed on one corpus: what a user who installs sentence-transformers instead
of this project gets. Run with the anchors' interpreter (jobs/bench/anchors.py); imports nothing from this project.

    <anchors python> jobs/bench/anchor_st.py '{"export": "runs/bench/default-export", "texts": "corpus.parquet",
        "batch_size": 32, "threads": 2, "recipes": ["fp32", "bf16_autocast", "onnx_fp32", "onnx_int8"],
        "vectors": "st_fp32.npy"}'

Each recipe is `SentenceTransformer(export, device="cpu").encode(texts, batch_size, normalize_embeddings=True)` on
the `text` column: `fp32`; `bf16_autocast`, the same inside `torch.autocast("cpu", dtype=torch.bfloat16)`;
`onnx_fp32`, `backend="onnx"` (exported from the weights on load); `onnx_int8`,
`export_dynamic_quantized_onnx_model(<the ONNX model>, "avx512_vnni", dir)` then loaded with
`model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"}`. ONNX files go into a temporary copy of the export,
never into the export (checked). Per recipe: `load_s` (construction, with the ONNX export or quantisation a first run
does), then `seconds` of one encode of all texts after a warm-up of two batches, `texts_per_s` = texts / `seconds`
(load excluded), and the min and mean cosine to the fp32 vectors, row by row. `fp32` always runs, first: it is the
reference, and its vectors are saved to `vectors` (.npy, rows in input order). The last stdout line is the JSON result.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

RECIPES = ("fp32", "bf16_autocast", "onnx_fp32", "onnx_int8")
INT8_FILE = "onnx/model_qint8_avx512_vnni.onnx"


def load(recipe: str, export: str, copy: Path, threads: int) -> SentenceTransformer:
    """The recipe's model; the ONNX ones from `copy` (the export's files, where ONNX files may be written)."""
    if recipe in ("fp32", "bf16_autocast"):
        return SentenceTransformer(export, device="cpu")
    import onnxruntime  # only the ONNX recipes need it (the project's own environment has none)

    session = onnxruntime.SessionOptions()
    session.intra_op_num_threads = threads
    kwargs = {"session_options": session}
    if recipe == "onnx_int8":
        onnx_model = SentenceTransformer(str(copy), device="cpu", backend="onnx", model_kwargs=kwargs)
        export_dynamic_quantized_onnx_model(onnx_model, "avx512_vnni", str(copy))
        kwargs = kwargs | {"file_name": INT8_FILE}
    return SentenceTransformer(str(copy), device="cpu", backend="onnx", model_kwargs=kwargs)


def encode(model: SentenceTransformer, recipe: str, texts: list[str], batch_size: int) -> np.ndarray:
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16) if recipe == "bf16_autocast" else contextlib.nullcontext()
    with bf16:
        vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float32)


def cosines(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row-by-row cosine of two (rows, dim) arrays."""
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
    return (vectors * reference).sum(axis=1) / norms


def versions() -> dict[str, str | None]:
    """What the recipes ran on; None: not installed (fine when no ONNX recipe ran)."""
    found = {}
    for name in ("sentence-transformers", "torch", "transformers", "onnxruntime", "optimum"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def main(request: dict) -> dict:
    unknown = set(request["recipes"]) - set(RECIPES)
    if unknown:
        raise SystemExit(f"unknown recipes {sorted(unknown)}; choose from {RECIPES}")
    recipes = [recipe for recipe in RECIPES if recipe == "fp32" or recipe in request["recipes"]]
    export, batch_size, threads = request["export"], request["batch_size"], request["threads"]
    texts = pq.read_table(request["texts"], columns=["text"]).column("text").to_pylist()
    torch.set_num_threads(threads)
    before = sorted(str(path) for path in Path(export).rglob("*"))
    result = {
        "texts": len(texts),
        "batch_size": batch_size,
        "threads": threads,
        "versions": versions(),
        "recipes": {},
    }
    reference = None
    with tempfile.TemporaryDirectory() as directory:
        copy = Path(shutil.copytree(export, Path(directory) / "export"))
        for recipe in recipes:
            started = time.perf_counter()
            model = load(recipe, export, copy, threads)
            load_s = time.perf_counter() - started
            if reference is None:
                pieces = [len(ids) for ids in model.tokenizer(texts)["input_ids"]]
                result |= {"mean_word_pieces": float(np.mean(pieces)), "max_seq_length": model.max_seq_length}
            encode(model, recipe, texts[: 2 * batch_size], batch_size)
            started = time.perf_counter()
            vectors = encode(model, recipe, texts, batch_size)
            seconds = time.perf_counter() - started
            if reference is None:
                reference = vectors
                np.save(request["vectors"], reference)
            agreement = cosines(vectors, reference)
            result["recipes"][recipe] = {
                "texts_per_s": len(texts) / seconds,
                "seconds": seconds,
                "load_s": load_s,
                "min_cosine": float(agreement.min()),
                "mean_cosine": float(agreement.mean()),
            }
            print(f"{recipe}: {json.dumps(result['recipes'][recipe])}", file=sys.stderr, flush=True)
            del model
    if sorted(str(path) for path in Path(export).rglob("*")) != before:
        raise SystemExit(f"{export} changed while the recipes ran: ONNX files must go into the temporary copy only")
    return result


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
