"""Benchmark: training throughput of (a) a plain PyTorch loop, (b) Ray Data -> Ray Train -> DeepSpeed with 1 worker,
(c) the same with 2 workers; same model, sequence length, micro batch and precision; fp32 and bf16.

    python -m jobs.bench.train [--steps 30] [--strategy full] [--precisions fp32,bf16]

(a) is one process: our model, strategy and parameter groups, `torch.optim.AdamW`, `torch.autocast` for bf16, batches
    already in memory (the floor nothing else can beat);
(a2) with --with-local-deepspeed: the same DeepSpeed recipe driven in this process without Ray;
(b)/(c) are `jobs.train`'s path on a local Ray (ZeRO-0 for 1 worker, ZeRO-2 for 2; CPU split so Ray Data keeps one),
    with `scaling.torch_threads` = cores / workers so every path uses the same number of threads.
Throughput is steady state (first 2 steps skipped); "data wait" is the share of step time a worker spent waiting
for its next batch. Data: ../shared/data/mixed when present, else the bundled sample. Prints a table and ratios.

Where the time goes: a sampler reads every process's CPU time from /proc during each run; for (a) and (b) the bench
prints, over the steady window, the share of the machine's CPU each process (and each thread name of the training
process) used, so a gap between (a) and (b) is attributed to processes and threads, not guessed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from jobs.bench.cpu_usage import CpuSampler, format_breakdown
from mtl.config import Config, validate_config

SHARED_MIXED = "../shared/data/mixed/train-00000.parquet"
OUT = Path("runs/bench_train")
TOPIC_LABELS = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]


def bench_data() -> str:
    if glob.glob(SHARED_MIXED):
        return str(Path(SHARED_MIXED).resolve())
    from mtl.data.prepare import prepare

    sources = {"sentiment": Path("data/sample/sentiment.tsv"), "topic": Path("data/sample/topic.tsv")}
    prepare(sources, {"sentiment": ["negative", "positive"], "topic": TOPIC_LABELS}, OUT / "data")
    return str((OUT / "data" / "train-00000.parquet").resolve())


def make_config(data: str, steps: int, strategy: str, precision: str, workers: int) -> Config:
    return validate_config(
        {
            "model": {"max_seq_length": 64},
            "tasks": {
                "sentiment": {"labels": ["negative", "positive"]},
                "topic": {"labels": TOPIC_LABELS},
            },
            "data": {"train": [data], "sampling": "proportional"},
            "finetune": {"strategy": strategy},
            "optim": {"backbone_lr": 5e-5, "head_lr": 1e-3, "warmup_ratio": 0.0},
            "train": {
                "max_steps": steps,
                "micro_batch_size": 32,
                "precision": precision,
                "eval_every": 10_000,
                "checkpoint_every": 10_000,
                "log_every": 10,
            },  # fmt: skip
            "deepspeed": {"zero_stage": 0 if workers == 1 else 2},
            "scaling": {
                "num_workers": workers,
                "cpus_per_worker": 1.0 if workers == 1 else 0.5,
                # Ray gives a 1-CPU worker one torch thread; (a) uses every core. Same threads in total here:
                "torch_threads": max(1, (os.cpu_count() or 1) // workers),
            },
            "run": {"name": f"{strategy}-{precision}-{workers}w", "storage_path": str(OUT.resolve())},
        },
        source="bench_train",
    )


def plain_loop(config: Config) -> dict:
    """(a): the same model and optimizer groups in a bare PyTorch loop; batches pre-read into memory."""
    from mtl.data.tokenization import tokenize
    from mtl.model.backbone import load_tokenizer
    from mtl.model.multitask import build_model
    from mtl.model.strategies import apply_strategy
    from mtl.train.losses import multitask_loss
    from mtl.train.optim import build_optimizer

    table = pq.read_table(config.data.train[0]).to_pydict()
    task_index = {name: i for i, name in enumerate(config.task_names)}
    model = apply_strategy(build_model(config), config.finetune).train()
    tokenizer = load_tokenizer(config.model)
    optimizer = build_optimizer(model, config.optim)
    weights = {name: 1.0 for name in config.task_names}
    size, steps = config.train.micro_batch_size, config.train.max_steps
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.train.precision == "bf16")
    timings, tokens_seen, window = [], [], []
    for step in range(steps):
        if step == 2:
            window.append(time.time())
        rows = slice(step * size, (step + 1) * size)
        started = time.perf_counter()
        tokens = tokenize(tokenizer, table["text"][rows], config.model.max_seq_length)
        task_ids = torch.tensor([task_index[t] for t in table["task"][rows]])
        labels = torch.tensor(table["label"][rows])
        with autocast:
            logits = model(tokens["input_ids"], tokens["attention_mask"])
        loss, _ = multitask_loss({k: v.float() for k, v in logits.items()}, task_ids, labels, weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timings.append(time.perf_counter() - started)
        tokens_seen.append(tokens["input_ids"].numel())
    window.append(time.time())
    steady = timings[2:]
    return {
        "samples_per_s": size * len(steady) / sum(steady),
        "padded_tokens_per_s": sum(tokens_seen[2:]) / sum(steady),
        "data_wait_fraction": 0.0,
        "window": window,
    }


def deepspeed_local(config: Config) -> dict:
    """(a2): the project's DeepSpeed recipe in this process (no Ray): separates DeepSpeed's cost from Ray's."""
    from mtl.train.local_session import train_locally

    config = config.model_copy(update={"run": config.run.model_copy(update={"name": config.run.name + "-local"})})
    shutil.rmtree(OUT / config.run.name, ignore_errors=True)
    torch.set_num_threads(os.cpu_count() or 1)
    return train_locally(config)["throughput"]


def ray_pipeline(config: Config) -> dict:
    from mtl.train.driver import train_on_ray

    shutil.rmtree(OUT / config.run.name, ignore_errors=True)  # a fresh run, not a resume
    throughput = train_on_ray(config)["throughput"]
    history = [json.loads(line) for line in (OUT / config.run.name / "history.jsonl").read_text().splitlines()]
    logged = [record["time"] for record in history if record["kind"] == "train" and record["step"] > 2]
    return {**throughput, "window": [logged[0], logged[-1]]}  # from the first log line after warm-up to the last


def run_precision(args: argparse.Namespace, data: str, precision: str) -> dict:
    """(a), [(a2)], (b), (c), then (a) again: the two (a) runs bracket the others and show the machine's drift."""
    row = {"a_plain_pytorch": plain_loop(make_config(data, args.steps, args.strategy, precision, 1))}
    if args.with_local_deepspeed:
        row["a2_deepspeed_no_ray"] = deepspeed_local(make_config(data, args.steps, args.strategy, precision, 1))
    row["b_ray_1_worker"] = ray_pipeline(make_config(data, args.steps, args.strategy, precision, 1))
    row["c_ray_2_workers"] = ray_pipeline(make_config(data, args.steps, args.strategy, precision, 2))
    row["a_plain_pytorch_again"] = plain_loop(make_config(data, args.steps, args.strategy, precision, 1))
    ratios = {}
    for unit in ("samples_per_s", "padded_tokens_per_s"):
        a = (row["a_plain_pytorch"][unit] + row["a_plain_pytorch_again"][unit]) / 2
        b, c = row["b_ray_1_worker"][unit], row["c_ray_2_workers"][unit]
        ratios[unit] = {"b_over_a": b / a, "c_over_b": c / b}
    row["ratios"] = ratios
    return row


def training_cpu(usage: dict, label: str) -> float:
    """CPU-seconds of the training process(es) in a breakdown."""
    return sum(cpu for name, cpu in usage["processes"].items() if name.startswith(label))


def explain_gap(row: dict) -> str:
    """(b)/(a) = (CPU share of the training process, b over a) x (tokens per training CPU-second, b over a)."""
    parts = {}
    for key, label in (("a_plain_pytorch", CpuSampler.SELF), ("b_ray_1_worker", "ray::RayTrainWorker")):
        usage = row[key]["cpu"]
        cpu = training_cpu(usage, label)
        parts[key] = {
            "share": cpu / (usage["window_s"] * usage["cores"]),
            "tokens_per_cpu_s": row[key]["padded_tokens_per_s"] * usage["window_s"] / max(cpu, 1e-9),
        }
    a, b = parts["a_plain_pytorch"], parts["b_ray_1_worker"]
    row["gap"] = {
        "cpu_share_b_over_a": b["share"] / a["share"],
        "efficiency_b_over_a": b["tokens_per_cpu_s"] / a["tokens_per_cpu_s"],
    }
    return (
        f"  training process CPU share (a) {a['share']:.1%} (b) {b['share']:.1%} "
        f"-> {row['gap']['cpu_share_b_over_a']:.2f}; "
        f"padded tokens per training CPU-second (a) {a['tokens_per_cpu_s']:.0f} (b) {b['tokens_per_cpu_s']:.0f} "
        f"-> {row['gap']['efficiency_b_over_a']:.2f}"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--strategy", default="full", choices=("head_only", "lora", "partial", "full"))
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--with-local-deepspeed", action="store_true", help="also (a2): DeepSpeed in-process, no Ray")
    args = parser.parse_args(argv)
    data = bench_data()
    print(f"data {data}; strategy {args.strategy}; {args.steps} steps x 32 rows, seq len <= 64; cores {os.cpu_count()}")
    import ray

    ray.init(runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}})
    me = os.getpid()
    # Threads broken down: this process (for (a)) and the Ray Train worker (for (b)).
    sampler = CpuSampler(detail=lambda pid, label: pid == me or label.startswith("ray::RayTrainWorker"))
    with sampler:
        results = {precision: run_precision(args, data, precision) for precision in args.precisions.split(",")}
    ray.shutdown()
    print(f"\n{'precision':<9} {'path':<22} {'samples/s':>10} {'tokens/s':>10} {'data wait':>10}")
    for precision, row in results.items():
        for key in [k for k in row if k != "ratios"]:
            wait, speed = row[key]["data_wait_fraction"], row[key]
            rates = f"{speed['samples_per_s']:>10.1f} {speed['padded_tokens_per_s']:>10.0f}"
            print(f"{precision:<9} {key:<22} {rates} {wait:>9.1%}")
        for unit, ratio in row["ratios"].items():
            print(f"{precision:<9} {unit}: (b)/(a) = {ratio['b_over_a']:.2f}   (c)/(b) = {ratio['c_over_b']:.2f}")
    print("\nCPU use over each steady window (share of all cores):")
    for precision, row in results.items():
        for key in [k for k in row if k != "ratios"]:
            window = row[key].pop("window", None)
            if window and key in ("a_plain_pytorch", "b_ray_1_worker"):
                row[key]["cpu"] = sampler.breakdown(*window)
                print(format_breakdown(f"{precision} {key}", row[key]["cpu"]))
        print(f"{precision} (b)/(a) decomposed:")
        print(explain_gap(row))
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
