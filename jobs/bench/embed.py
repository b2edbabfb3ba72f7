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

    python -m jobs.bench.embed --anchor st [--corpus long|mixed] [--rows N] [--model EXPORT]

`--anchor st` instead compares the whole job with what a user would install instead: sentence-transformers' own CPU
recipes (jobs/bench/anchor_st.py in the anchors' environment, jobs/bench/anchors.py: `encode` fp32, under bf16
autocast, ONNX fp32, ONNX int8; batch 32, as many threads as the job's one actor) against `python -m jobs.embed
--precision bf16` as a user runs it, on one corpus of >= 60,000 texts written once to Parquet. `long` (default):
60,000 texts of ~50 word pieces, STS-B sentences joined as in the `long` case, each pass over the sentences after the
first in a new seeded order (59,890 distinct texts); `mixed`: every text of ../shared/data/mixed (train + validation,
64,684, mostly short SST-2 phrases). ST's texts/s are of one `encode` call after a warm-up, its model load (with the
ONNX export or quantisation) reported apart; the job's are of the whole process (interpreter, imports, Ray start,
pre-flight, read -> actor -> write), and its fixed start-up (process wall minus the job's own seconds after Ray
start) is reported apart too. Our output is read back in input order and checked row by row against the input's
texts and ST fp32's vectors. Targets: the job >= 1.0x the fastest ST recipe whose min cosine to fp32 is >= 0.99, and
>= 2.0x ST fp32.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
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
SHARED_MIXED = ("../shared/data/mixed/train-*.parquet", "../shared/data/mixed/validation.parquet")
SAMPLE = "data/sample/sentiment.tsv"
CASES = {"short": 4000, "long": 7600}
CORPORA = {"long": 60_000, "mixed": 64_684}  # --anchor's corpora: rows (mixed: all of train + validation)
RECIPES = ("fp32", "bf16_autocast", "onnx_fp32", "onnx_int8")  # jobs/bench/anchor_st.py's
ST_BATCH = 32  # SentenceTransformer.encode's default
MIN_COSINE = 0.99  # to ST fp32: a recipe below it is not the same embedding
RECIPE_NAMES = {
    "fp32": "ST encode fp32",
    "bf16_autocast": "ST encode, torch.autocast bf16",
    "onnx_fp32": "ST backend=onnx fp32",
    "onnx_int8": "ST onnx int8 (avx512_vnni, dynamic)",
}


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


def long_texts(rows: int, words: int = 34, distinct: bool = False) -> tuple[list[str], str]:
    """Texts of ~50 word pieces: consecutive STS-B sentences (else sample sentences) joined to ~`words` words.

    Past the last sentence they start again: in file order they fall back into the same groups (60,000 texts would
    be ~2,900 distinct ones); with `distinct`, each later pass takes the sentences in a new seeded order."""
    if Path(SHARED_STSB).is_file():
        table = pq.read_table(SHARED_STSB)
        sentences, source = table.column("sentence1").to_pylist() + table.column("sentence2").to_pylist(), SHARED_STSB
    else:
        sentences, source = load_texts(None, 2000)[0], SAMPLE
    texts, current, index = [], [], 0
    while len(texts) < rows:
        turn, at = divmod(index, len(sentences))
        if distinct and turn and not at:
            random.Random(turn).shuffle(sentences)
        current.append(sentences[at])
        index += 1
        if sum(len(sentence.split()) for sentence in current) >= words:
            texts.append(" ".join(current))
            current = []
    return texts, f"{source} (sentences joined to ~{words} words{', later passes shuffled' if distinct else ''})"


def mixed_texts(rows: int) -> tuple[list[str], str]:
    """The first `rows` texts of ../shared/data/mixed, train shards then validation (else the sample, repeated)."""
    files = [path for pattern in SHARED_MIXED for path in sorted(glob.glob(pattern))]
    if not files:
        return load_texts(None, rows)
    texts = [text for path in files for text in pq.read_table(path, columns=["text"]).column("text").to_pylist()]
    return texts[:rows], " + ".join(SHARED_MIXED)


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


def run_job(model: Path, inputs: str, output: str, precision: str, *flags: str, timeout: float = 900) -> dict:
    """`python -m jobs.embed` as a user runs it (a fresh local Ray), timed from process start to exit; the job's own
    seconds after Ray start come from its summary line. The output stays where `output` says."""
    command = [sys.executable, "-m", "jobs.embed", "--model", str(model), "--input", inputs, "--output", output,
               "--precision", precision, *flags]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"jobs.embed failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-3000:]}")
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "job_s_after_ray_start": summary["seconds"]}


def whole_job(model: Path, texts: list[str], precision: str) -> dict:
    """`run_job` on `texts`, its output thrown away."""
    with tempfile.TemporaryDirectory() as directory:
        pq.write_table(pa.table({"text": texts}), f"{directory}/input.parquet")
        timing = run_job(model, f"{directory}/input.parquet", f"{directory}/out", precision)
    return timing | {"rows_per_s": len(texts) / timing["wall_s"]}


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


def read_output(directory: Path) -> pa.Table:
    """A `jobs.embed` output in input order: its `part-<first input row>.parquet` files in name order."""
    return pa.concat_tables(pq.read_table(path) for path in sorted(directory.glob("part-*.parquet")))


def anchor_st(model: Path, corpus: str, rows: int, recipes: tuple[str, ...] | list[str] = RECIPES) -> dict:
    """--anchor st: ST's CPU recipes, then the whole job, on one corpus; see the module docstring."""
    from jobs.bench.anchors import run_script

    texts, source = long_texts(rows, distinct=True) if corpus == "long" else mixed_texts(rows)
    if not Path("../shared/data").is_dir():
        print("../shared/data is missing: the corpus is the bundled sample, repeated (rates not comparable)")
    threads = os.cpu_count() or 1  # jobs.embed's one actor takes them all by default
    print(f"\n=== {corpus}: {len(texts)} texts ({len(set(texts))} distinct) from {source}; {threads} threads")
    with tempfile.TemporaryDirectory() as directory:
        inputs, vectors, output = f"{directory}/corpus.parquet", f"{directory}/st_fp32.npy", Path(directory, "out")
        pq.write_table(pa.table({"text": texts}), inputs)
        request = {"export": str(model.resolve()), "texts": inputs, "batch_size": ST_BATCH, "threads": threads,
                   "recipes": list(recipes), "vectors": vectors}  # fmt: skip
        st = run_script("anchor_st.py", request)
        reference = np.load(vectors)
        job = run_job(model, inputs, str(output), "bf16", "--keep-columns", "text", timeout=3600)
        table = read_output(output)
    assert table.num_rows == len(texts), f"jobs.embed wrote {table.num_rows} rows for {len(texts)} texts"
    assert table.column("text").to_pylist() == texts, "jobs.embed's rows are not the input's, in input order"
    embedded = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(texts), -1)
    norms = np.linalg.norm(embedded, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = (embedded * reference).sum(axis=1) / norms
    rate = len(texts) / job["wall_s"]
    ours = job | {
        "texts_per_s": rate,
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
        "startup_s": job["wall_s"] - job["job_s_after_ray_start"],
        "texts_per_s_after_ray_start": len(texts) / job["job_s_after_ray_start"],
    }
    recipes = st.pop("recipes")
    ratios = {recipe: rate / values["texts_per_s"] for recipe, values in recipes.items()}
    faithful = [recipe for recipe in recipes if recipes[recipe]["min_cosine"] >= MIN_COSINE]
    best = max(faithful, key=lambda recipe: recipes[recipe]["texts_per_s"])
    result = {
        "corpus": {"name": corpus, "source": source, "texts": len(texts), "distinct": len(set(texts))},
        "threads": threads,
        "st": st,
        "recipes": recipes,
        "ours": ours,
        "ratios": ratios,
        "best_recipe": best,
        "targets": {
            "vs_best_recipe": {"recipe": best, "ratio": ratios[best], "target": 1.0, "met": ratios[best] >= 1.0},
            "vs_st_fp32": {"recipe": "fp32", "ratio": ratios["fp32"], "target": 2.0, "met": ratios["fp32"] >= 2.0},
        },
    }
    print_anchor(result)
    return result


def print_anchor(result: dict) -> None:
    st, ours, ratios = result["st"], result["ours"], result["ratios"]
    print(f"mean word pieces {st['mean_word_pieces']:.1f} (max_seq_length {st['max_seq_length']}), ST batch "
          f"{st['batch_size']}; ST texts/s and seconds exclude its model load (load s)")  # fmt: skip
    print(f"  {'recipe':<42} {'texts/s':>8} {'seconds':>8} {'load s':>7} {'min cos':>8} {'ours/recipe':>11}")
    for recipe, values in result["recipes"].items():
        print(f"  {RECIPE_NAMES[recipe]:<42} {values['texts_per_s']:>8.1f} {values['seconds']:>8.1f} "
              f"{values['load_s']:>7.1f} {values['min_cosine']:>8.5f} {ratios[recipe]:>10.2f}x")  # fmt: skip
    print(f"  {'jobs.embed --precision bf16, whole process':<42} {ours['texts_per_s']:>8.1f} {ours['wall_s']:>8.1f} "
          f"{'':>7} {ours['min_cosine']:>8.5f}")  # fmt: skip
    after = f"{ours['job_s_after_ray_start']:.1f} s ({ours['texts_per_s_after_ray_start']:.1f} texts/s)"
    print(f"jobs.embed fixed start-up (interpreter, imports, pre-flight, Ray start): {ours['startup_s']:.1f} s; after "
          f"Ray start {after}")  # fmt: skip
    print(f"best ST recipe with min cosine >= {MIN_COSINE}: {RECIPE_NAMES[result['best_recipe']]}")
    for name, target in result["targets"].items():
        verdict = "met" if target["met"] else "NOT met"
        print(f"target {name} ({target['recipe']}): {target['ratio']:.2f}x, wanted >= {target['target']}x: {verdict}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="export directory (default: the untouched default backbone)")
    parser.add_argument("--cases", default="short,long", help="comma-separated: short, long")
    parser.add_argument("--skip-job", action="store_true", help="only the in-process comparison")
    parser.add_argument("--anchor", choices=("st",), help="compare the whole job with sentence-transformers' CPU "
                        "recipes instead (--cases and --skip-job do not apply)")  # fmt: skip
    parser.add_argument("--corpus", choices=tuple(CORPORA), default="long", help="--anchor's corpus (default long)")
    parser.add_argument("--rows", type=int, help="cut --anchor's corpus to this many texts (smoke runs)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="--anchor's ST recipes (fp32 always runs: the "
                        "reference); default all")  # fmt: skip
    args = parser.parse_args(argv)
    model = Path(args.model) if args.model else default_export()
    print(f"model {model}; torch threads {torch.get_num_threads()}; cores {os.cpu_count()}")
    if args.anchor:
        result = anchor_st(model, args.corpus, args.rows or CORPORA[args.corpus], args.recipes.split(","))
        print(json.dumps(result))
        return result
    result = {}
    for name in args.cases.split(","):
        texts, source = load_texts(None, CASES[name]) if name == "short" else long_texts(CASES[name])
        result[name] = run_case(name, model, texts, source, job=not args.skip_job)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
