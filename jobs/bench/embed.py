"""Benchmark: batch embedding throughput of sentence-transformers vs our path (fp32, bf16), same texts, one run.

    python -m jobs.bench.embed [--model EXPORT] [--cases short,long] [--skip-job]

Two cases: `short` = 4,000 SST-2 sentences and phrases (~13 word pieces), `long` = 7,600 texts of ~50 word pieces
(consecutive STS-B sentences joined). Per case:
(a) `SentenceTransformer(export).encode` at its default batch size, fp32, in this process (model already loaded);
(b) the batch job's callable (`mtl.inference.batch.EmbedBatch`, what each Ray Data actor runs) in fp32;
(c) the same in bf16; steady-state texts/s after a warm-up, in this process with the same threads;
(d) the whole `python -m jobs.embed` command in bf16 as a user runs it: wall time of the process, interpreter
    start, imports, Ray start, pre-flight, Ray Data read -> actor pool -> write included.
Prints rows/s, the ratios against (a), and the cosine agreement of (b), (c) with (a).
Data: ../shared/data when present, else the bundled sample (repeated). Default model: an export of the untouched
default backbone (built once under runs/bench/).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mtl.export_format import is_export
from mtl.inference.batch import EmbedBatch, EmbedOptions

SHARED_SST2 = "../shared/data/sst2/train-*.parquet"
SHARED_STSB = "../shared/data/stsb/train.parquet"
SAMPLE = "data/sample/sentiment.tsv"
CASES = {"short": 4000, "long": 7600}


def load_texts(pattern: str | None, rows: int) -> tuple[list[str], str]:
    """`rows` texts from the `text` column of a Parquet glob (default: shared SST-2, else the sample, repeated)."""
    if pattern is None:
        pattern = SHARED_SST2 if glob.glob(SHARED_SST2) else None
    if pattern is None:
        lines = Path(SAMPLE).read_text().splitlines()
        texts = [line.split("\t")[0] for line in lines[1:]]
        return (texts * (rows // len(texts) + 1))[:rows], SAMPLE + " (repeated)"
    texts: list[str] = []
    for path in sorted(glob.glob(pattern)):
        texts += pq.read_table(path, columns=["text"]).column("text").to_pylist()
        if len(texts) >= rows:
            break
    return texts[:rows], pattern


def long_texts(rows: int, words: int = 34) -> tuple[list[str], str]:
    """Texts of ~50 word pieces: consecutive STS-B sentences (else sample sentences) joined to ~`words` words."""
    if Path(SHARED_STSB).is_file():
        table = pq.read_table(SHARED_STSB)
        sentences, source = table.column("sentence1").to_pylist() + table.column("sentence2").to_pylist(), SHARED_STSB
    else:
        sentences, source = load_texts(None, 2000)[0], SAMPLE
    texts, current, index = [], [], 0
    while len(texts) < rows:
        current.append(sentences[index % len(sentences)])
        index += 1
        if sum(len(sentence.split()) for sentence in current) >= words:
            texts.append(" ".join(current))
            current = []
    return texts, f"{source} (sentences joined to ~{words} words)"


def default_export() -> Path:
    """The default backbone exported as-is (random heads): embeddings are what the backbone gives."""
    directory = Path("runs/bench/default-export")
    if not is_export(directory):
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


def whole_job(model: Path, texts: list[str], precision: str) -> dict:
    """`python -m jobs.embed` as a user runs it, timed from process start to exit."""
    with tempfile.TemporaryDirectory() as directory:
        pq.write_table(pa.table({"text": texts}), f"{directory}/input.parquet")
        command = [sys.executable, "-m", "jobs.embed", "--model", str(model), "--input", f"{directory}/input.parquet",
                   "--output", f"{directory}/out", "--precision", precision]  # fmt: skip
        env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"jobs.embed failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-3000:]}")
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "rows_per_s": len(texts) / wall, "job_s_after_ray_start": summary["seconds"]}


def run_case(name: str, model: Path, texts: list[str], source: str, job: bool) -> dict:
    from sentence_transformers import SentenceTransformer

    print(f"\n=== {name}: {len(texts)} texts from {source}")
    warmup = texts[:64]
    st_model = SentenceTransformer(str(model), device="cpu")
    lengths = [len(ids) for ids in st_model.tokenizer(texts[:2000])["input_ids"]]
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
    jobs = {"bf16": whole_job(model, texts, "bf16")} if job else {}
    for precision, timing in jobs.items():
        rates[f"d_jobs_embed_{precision}_whole_process"] = timing["rows_per_s"]
    base = rates["a_sentence_transformers_fp32"]
    print(f"mean word pieces {np.mean(lengths):.1f}; {'path':<40} {'texts/s':>9} {'vs (a)':>8}")
    for key, rate in rates.items():
        print(f"  {key:<40} {rate:>9.1f} {rate / base:>7.2f}x")
    for precision, values in agreement.items():
        print(f"  cosine vs (a), {precision}: min {values['min_cosine']:.5f} mean {values['mean_cosine']:.5f}")
    for precision, timing in jobs.items():
        print(f"  jobs.embed {precision}: {timing['wall_s']:.1f} s whole process, "
              f"{timing['job_s_after_ray_start']:.1f} s of it after Ray start")  # fmt: skip
    return {"texts": len(texts), "source": source, "mean_word_pieces": float(np.mean(lengths)), "rates": rates,
            "agreement": agreement, "jobs": jobs}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="export directory (default: the untouched default backbone)")
    parser.add_argument("--cases", default="short,long", help="comma-separated: short, long")
    parser.add_argument("--skip-job", action="store_true", help="only the in-process comparison")
    args = parser.parse_args(argv)
    model = Path(args.model) if args.model else default_export()
    print(f"model {model}; torch threads {torch.get_num_threads()}; cores {os.cpu_count()}")
    result = {}
    for name in args.cases.split(","):
        texts, source = load_texts(None, CASES[name]) if name == "short" else long_texts(CASES[name])
        result[name] = run_case(name, model, texts, source, job=not args.skip_job)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
