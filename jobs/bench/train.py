"""Benchmark: training throughput of the production preset's setup under recipe variants, with where each step goes.

    python -m jobs.bench.train [--steps 80] [--variants today,shipped,...] [--config jobs/configs/production.yaml]

Every variant is `jobs.train`'s own path (Ray Data -> Ray Train -> DeepSpeed) with the preset's model, batch, workers,
ZeRO stage and precision, changed only by the variant's `--set` overrides, for `--steps` optimizer steps (validation,
checkpoints and the report off). `today` is the recipe before this bench's changes (random batches, 2 workers x 1
thread, ZeRO-2, plain AdamW: `TODAY` below); `shipped` is the preset as it is in the repository. Steady state: the
first 2 steps are skipped. Printed per variant: samples/s, real and padded tokens/s, padded tokens per real token,
model FLOP/s (6 x non-embedding parameters x real tokens) as a share of this machine's matmul peak measured in the
same run, and milliseconds per step in each phase (data wait, tokenise/pad, forward, backward, gradient sync,
optimizer).
Data: the preset's training files when present, else the bundled sample.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import time
from pathlib import Path

import torch

from mtl.config import Config, apply_overrides, load_config, validate_config
from mtl.train.progress import PHASES

OUT = Path("runs/bench_train")
# The recipe before length-grouped batches, as production.yaml had it: random batches, 2 workers x 1 thread, ZeRO-2.
TODAY = [
    "data.length_window=0",
    "optim.fused=false",
    "scaling.num_workers=2",
    "scaling.cpus_per_worker=0.5",
    "scaling.torch_threads=null",
    "deepspeed.zero_stage=2",
    "train.micro_batch_size=32",
]
# 1 worker x 2 torch threads, no gradient sync, the same 64 rows per optimizer step.
ONE_WORKER = [
    "scaling.num_workers=1",
    "scaling.cpus_per_worker=1",
    "scaling.torch_threads=2",
    "deepspeed.zero_stage=0",
    "train.micro_batch_size=64",
]
# Quality levers that change what a step computes (longer rows drawn more often; the distillation target) are off
# in the named variants, so they compare speed only; `shipped` keeps them, as the preset has them.
SPEED_ONLY = ["retain.method=none", "data.long_text_words=null", "data.long_text_factor=1.0"]
VARIANTS = {
    "today": TODAY,
    "length": [*TODAY[1:]],
    "length+fused": [*TODAY[2:]],
    "length+autocast": [*TODAY[1:], "deepspeed.autocast=true"],
    "length+compile": [*TODAY[1:], "train.compile=true"],
    "length+1worker": ["optim.fused=false", *ONE_WORKER],
    "length+fused+1worker": [*ONE_WORKER],  # what production.yaml ships
    "length+fused+1worker+frozen_embeddings": [*ONE_WORKER, "finetune.freeze_embeddings=true"],
    "length+fused+frozen_embeddings": [*TODAY[2:], "finetune.freeze_embeddings=true"],
}


def matmul_peak(dtype: torch.dtype, size: int = 1024, seconds: float = 2.0) -> float:
    """FLOP/s of a square matmul on all of this process's threads: the ceiling the model's matmuls could reach."""
    left, right = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        left @ right
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        left @ right
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - started)


def non_embedding_parameters(config: Config) -> int:
    from mtl.model.multitask import build_model

    model = build_model(config)
    return sum(p.numel() for name, p in model.named_parameters() if "embeddings." not in name)


def sample_training_file() -> str:
    from mtl.data.prepare import prepare

    sources = {"sentiment": Path("data/sample/sentiment.tsv"), "topic": Path("data/sample/topic.tsv")}
    labels = {"sentiment": ["negative", "positive"], "topic": ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]}
    prepare(sources, labels, OUT / "data")
    return str((OUT / "data" / "train-00000.parquet").resolve())


def variant_config(preset: Path, overrides: list[str], steps: int, name: str) -> Config:
    base = load_config(preset)
    raw = apply_overrides(base.model_dump(mode="json"), overrides if name == "shipped" else [*SPEED_ONLY, *overrides])
    if not any(glob.glob(pattern) for pattern in base.data.train):  # no shared data here: the bundled sample
        raw["data"]["train"] = [sample_training_file()]
    quiet = {"max_steps": steps, "epochs": None, "eval_every": 10**6, "checkpoint_every": 10**6, "log_every": 10}
    raw["train"].update(quiet)
    raw["data"].update(validation=[], stsb=None)
    raw["retain"].update(max_stsb_drop=None, wise_alphas=[])  # both need data.stsb
    raw["run"].update(name=name.replace(" ", "").replace(",", "-").replace("+", "-"), storage_path=str(OUT.resolve()))
    raw["run"]["max_failures"] = 0
    return validate_config(raw, source=f"{preset} + {overrides}")


def run_variant(config: Config) -> dict:
    from mtl.train.driver import train_on_ray

    shutil.rmtree(OUT / config.run.name, ignore_errors=True)  # a fresh run, not a resume
    started = time.perf_counter()
    result = train_on_ray(config)
    return {**result["throughput"], "wall_s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("jobs/configs/production.yaml"))
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--variants", default="today,shipped", help=f"comma-separated: shipped, {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [name for name in names if name != "shipped" and name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; known: shipped, {', '.join(VARIANTS)}")
    configs = {name: variant_config(args.config, VARIANTS.get(name, []), args.steps, name) for name in names}
    first = next(iter(configs.values()))
    parameters = non_embedding_parameters(first)
    torch.set_num_threads(os.cpu_count() or 1)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"preset {args.config}; data {first.data.train}; {args.steps} steps; cores {os.cpu_count()}")
    print(f"matmul peak (1024^2, {torch.get_num_threads()} threads): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s; non-embedding parameters {parameters:,}")  # fmt: skip
    import ray

    ray.init(runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}})
    results = {}
    for name, config in configs.items():
        print(f"\n=== {name}: {VARIANTS.get(name, 'the preset as shipped')}", flush=True)
        row = run_variant(config)
        flops = 6 * parameters * row["real_tokens_per_s"]
        precision = "bf16" if config.train.precision == "bf16" else "fp32"
        row.update(model_flops_per_s=flops, share_of_peak=flops / peaks[precision], peak_precision=precision)
        results[name] = row
    ray.shutdown()

    base = results.get("today")
    header = f"{'variant':<30} {'samples/s':>9} {'real tok/s':>10} {'padded/s':>9} {'pad/real':>8} {'peak':>6}"
    print("\n" + header + (f" {'x today':>8}" if base else ""))
    for name, row in results.items():
        line = (
            f"{name:<30} {row['samples_per_s']:>9.1f} {row['real_tokens_per_s']:>10.0f} "
            f"{row['padded_tokens_per_s']:>9.0f} {row['padded_per_real_token']:>8.2f} {row['share_of_peak']:>6.1%}"
        )
        print(line + (f" {row['real_tokens_per_s'] / base['real_tokens_per_s']:>7.2f}x" if base else ""))
    print(f"\n{'ms per step':<30} " + " ".join(f"{phase:>9}" for phase in (*PHASES, "step")))
    for name, row in results.items():
        phases = " ".join(f"{row['phase_ms'][phase]:>9.1f}" for phase in PHASES)
        print(f"{name:<30} {phases} {row['step_ms']:>9.1f}")
    summary = {"peaks_flops": peaks, "non_embedding_parameters": parameters, "variants": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
