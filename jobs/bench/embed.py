"""Benchmark: batch embedding throughput of sentence-transformers vs our path (fp32, bf16), same texts, one run.

    python -m jobs.bench.embed [--model EXPORT] [--data PARQUET_GLOB] [--rows 4000]

(a) `SentenceTransformer(export).encode` at its default batch size, fp32;
(b) the batch job's callable (`mtl.batch_embed.EmbedBatch`, what each Ray Data actor runs) in fp32;
(c) the same in bf16; steady-state sentences/s after a warm-up, in this process with the same threads.
Then the whole `jobs.embed` path on a local Ray (wall time including Ray start) in fp32 and bf16.
Prints a table, the ratios against (a), and the cosine agreement of (b), (c) with (a).
Default data: ../shared/data/sst2 when present, else the bundled sample. Default model: an export of the
untouched default backbone (built once under runs/bench/).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mtl.inference.batch import EmbedBatch, EmbedOptions, run_embedding

SHARED_SST2 = "../shared/data/sst2/train-*.parquet"
SAMPLE = "data/sample/sentiment.tsv"


def load_texts(pattern: str | None, rows: int) -> tuple[list[str], str]:
    if pattern is None:
        pattern = SHARED_SST2 if glob.glob(SHARED_SST2) else None
    if pattern is None:
        lines = Path(SAMPLE).read_text().splitlines()
        texts = [line.split("\t")[0] for line in lines[1:]]
        return (texts * (rows // len(texts) + 1))[:rows], SAMPLE + " (repeated)"
    files = sorted(glob.glob(pattern))
    texts: list[str] = []
    for path in files:
        texts += pq.read_table(path, columns=["text"]).column("text").to_pylist()
        if len(texts) >= rows:
            break
    return texts[:rows], pattern


def default_export() -> Path:
    """The default backbone exported as-is (random heads): embeddings are what the backbone gives."""
    directory = Path("runs/bench/default-export")
    if not (directory / "mtl.json").is_file():
        from mtl.config import validate_config
        from mtl.inference.export import export_model
        from mtl.model.backbone import load_tokenizer
        from mtl.model.multitask import build_model

        config = validate_config({"model": {"max_seq_length": 128}, "tasks": {"sentiment": {"labels": ["n", "p"]}}})
        export_model(build_model(config), config, load_tokenizer(config.model), directory, metrics={}, steps=0)
    return directory


def timed(function, warmup_texts, texts) -> tuple[float, np.ndarray]:
    function(warmup_texts)
    started = time.perf_counter()
    vectors = function(texts)
    return len(texts) / (time.perf_counter() - started), vectors


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="export directory (default: the untouched default backbone)")
    parser.add_argument("--data", help="Parquet glob with a `text` column (default: shared SST-2 or the sample)")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--skip-ray", action="store_true", help="only the in-process comparison")
    args = parser.parse_args(argv)
    model = Path(args.model) if args.model else default_export()
    texts, source = load_texts(args.data, args.rows)
    warmup = texts[:64]
    print(f"{len(texts)} texts from {source}; model {model}; torch threads {torch.get_num_threads()}")

    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(str(model), device="cpu")
    rates: dict[str, float] = {}
    rates["a_sentence_transformers_fp32"], reference = timed(
        lambda batch: st_model.encode(batch, normalize_embeddings=True), warmup, texts
    )
    agreement = {}
    for precision in ("fp32", "bf16"):
        embed = EmbedBatch(EmbedOptions(model=str(model), inputs=[], output="", precision=precision))
        key = f"{'b' if precision == 'fp32' else 'c'}_mtl_embed_{precision}"

        def run(batch, embed=embed):
            return np.stack(embed(pa.table({"text": batch})).column("embedding").to_numpy(zero_copy_only=False))

        rates[key], vectors = timed(run, warmup, texts)
        cosine = (vectors * reference).sum(axis=1)
        agreement[precision] = {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}
    base = rates["a_sentence_transformers_fp32"]
    print(f"\n{'path':<34} {'sentences/s':>12} {'vs (a)':>8}")
    for key, rate in rates.items():
        print(f"{key:<34} {rate:>12.1f} {rate / base:>7.2f}x")
    for precision, values in agreement.items():
        print(f"cosine vs (a), {precision}: min {values['min_cosine']:.5f} mean {values['mean_cosine']:.5f}")
    result = {"texts": len(texts), "source": source, "model": str(model), "rates": rates, "agreement": agreement}
    if not args.skip_ray:
        result["ray_job"] = ray_job(model, texts)
    print(json.dumps(result))
    return result


def ray_job(model: Path, texts: list[str]) -> dict:
    """The full job (pre-flight, Ray Data read -> actor pool -> write) on a local Ray, wall time incl. Ray start."""
    import ray

    timings = {}
    with tempfile.TemporaryDirectory() as directory:
        pq.write_table(pa.table({"text": texts}), f"{directory}/input.parquet")
        started = time.perf_counter()
        ray.init(runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
        timings["ray_start_s"] = time.perf_counter() - started
        for precision in ("fp32", "bf16"):
            options = EmbedOptions(
                model=str(model),
                inputs=[f"{directory}/input.parquet"],
                output=f"{directory}/out-{precision}",
                precision=precision,
                threads=os.cpu_count(),
            )
            summary = run_embedding(options)
            timings[precision] = {"job_s": summary["seconds"], "rows_per_s": summary["rows_per_s"]}
            print(f"jobs.embed on Ray ({precision}): {summary['seconds']:.1f} s for {len(texts)} rows "
                  f"({summary['rows_per_s']:.1f} rows/s end to end, after Ray start)")  # fmt: skip
        ray.shutdown()
    timings["wall_incl_ray_start_s"] = time.perf_counter() - started
    print(f"Ray start {timings['ray_start_s']:.1f} s; wall incl. Ray start {timings['wall_incl_ray_start_s']:.1f} s")
    return timings


if __name__ == "__main__":
    main()
