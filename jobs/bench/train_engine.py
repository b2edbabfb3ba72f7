"""Benchmark: one optimizer step of the same model and batches in one process, by engine and memory allocator.

    python -m jobs.bench.train_engine [--steps 40] [--engines plain,deepspeed,deepspeed+fast_dropout]
        [--allocators system,jemalloc]

Why `jobs.bench.train --anchor hf-trainer` found the Hugging Face Trainer faster than our path on a CPU node. The
model is the Trainer anchor's (`jobs/bench/anchor_hf_trainer.py`: MiniLM, mean pooling, a head per task); the batches
are the Trainer's own (its length-grouped sampler and padding collator over the shared SST-2 + TREC mixture, 64 rows,
max 64 word pieces; its first, longest batch skipped); 2 threads, no Ray. Engines: `plain` = `torch.autocast` bf16
over fp32 weights, fused AdamW, clipping (what the Trainer does); `deepspeed` = DeepSpeed bf16 (bf16 weights, fp32
master copy, ZeRO-0, clipping 1.0, as our recipe) with the same fused AdamW; `deepspeed_autocast` = DeepSpeed's
`torch_autocast` recipe (fp32 weights, no master copy: `deepspeed.autocast`); `+fast_dropout`: the model's dropouts
drawn by `mtl.model.fast_dropout` (what our recipe does on CPU). Allocators: `system` (glibc malloc) and
`jemalloc` (Ray's bundled one with `mtl.train.worker_allocator.JEMALLOC_CONF`, what our training workers get).
Every (allocator, engine) pair runs in a fresh process (an allocator is chosen at process start, and a process's
first engine pays page faults that a second would not). Prints ms per step in forward, backward and optimizer and
the minor page faults per step. Needs ../shared/data/mixed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROWS = 64
DATA = "../shared/data/mixed"
ENGINES = (
    "plain",
    "deepspeed",
    "plain+fast_dropout",
    "deepspeed+fast_dropout",
    "deepspeed_autocast+fast_dropout",
)
ALLOCATORS = ("system", "jemalloc")


def allocator_env(allocator: str) -> dict[str, str]:
    from mtl.config import ScalingConfig
    from mtl.train.worker_allocator import worker_runtime_env

    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.pop("MALLOC_CONF", None)
    env.update(worker_runtime_env(ScalingConfig(allocator=allocator)).get("env_vars", {}))
    return env


def trainer_batches(steps: int) -> list[dict]:
    """The Trainer's own first `steps` batches after its longest (length-grouped sampler, padding collator)."""
    from transformers import AutoTokenizer, TrainingArguments

    from jobs.bench import anchor_hf_trainer as anchor
    from mtl.model.backbone import resolve_backbone

    backbone = str(resolve_backbone("sentence-transformers/all-MiniLM-L6-v2"))
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    rows = anchor.read_rows(sorted(glob.glob(f"{DATA}/train-*.parquet")), ["sentiment", "topic"], tokenizer, 64)
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=ROWS, max_steps=steps,
                             bf16=True, train_sampling_strategy="group_by_length", remove_unused_columns=False,
                             report_to=[], use_cpu=True, seed=0)  # fmt: skip
    trainer = anchor.Trainer(model=anchor.MultiTaskModel(backbone, [2, 6], [1.0, 2.0]), args=args, train_dataset=rows,
                             data_collator=anchor.DataCollatorWithPadding(tokenizer))  # fmt: skip
    loader = iter(trainer.get_train_dataloader())
    next(loader)
    return [next(loader) for _ in range(steps)]


def one(engine: str, steps: int) -> dict:
    """Time `engine` on the Trainer's batches in this process (3 warm-up steps first)."""
    import torch

    from jobs.bench.anchor_hf_trainer import MultiTaskModel
    from mtl.model.backbone import resolve_backbone

    torch.set_num_threads(2)
    batches = trainer_batches(steps + 3)
    torch.manual_seed(0)
    model = MultiTaskModel(str(resolve_backbone("sentence-transformers/all-MiniLM-L6-v2")), [2, 6], [1.0, 2.0]).train()
    if engine.endswith("+fast_dropout"):
        from mtl.model.fast_dropout import use_fast_dropout

        use_fast_dropout(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    if engine.startswith("plain"):

        def forward(batch):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(batch["input_ids"], batch["attention_mask"], batch["task_ids"], batch["labels"])["loss"]

        backward = torch.Tensor.backward

        def step():
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed

        from mtl.train.local_session import ensure_single_process_group

        ensure_single_process_group(use_gpu=False)
        config = {"train_micro_batch_size_per_gpu": ROWS, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
                  "zero_optimization": {"stage": 0}, "gradient_clipping": 1.0, "steps_per_print": 10**9}  # fmt: skip
        if engine.startswith("deepspeed_autocast"):  # fp32 weights, bf16 autocast inside the engine's forward
            config.update(bf16={"enabled": False}, torch_autocast={"enabled": True, "dtype": "bfloat16"})
        engine_, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)

        def forward(batch):
            return engine_(batch["input_ids"], batch["attention_mask"], batch["task_ids"], batch["labels"])["loss"]

        backward, step = engine_.backward, engine_.step
    totals = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    faults = 0
    for index, batch in enumerate(batches):
        if index == 3:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        began = time.perf_counter()
        loss = forward(batch)
        forwarded = time.perf_counter()
        backward(loss)
        backwarded = time.perf_counter()
        step()
        if index >= 3:
            totals["forward"] += forwarded - began
            totals["backward"] += backwarded - forwarded
            totals["optimizer"] += time.perf_counter() - backwarded
    measured = batches[3:]
    ms = {phase: round(value / steps * 1000, 1) for phase, value in totals.items()}
    return {
        **ms,
        "step": round(sum(ms.values()), 1),
        "minor_faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) // steps,
        "real_tokens_per_step": sum(int(b["attention_mask"].sum()) for b in measured) / steps,
        "padded_tokens_per_step": sum(b["input_ids"].numel() for b in measured) / steps,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--engines", default="plain,deepspeed,deepspeed+fast_dropout",
                        help=f"comma-separated: {', '.join(ENGINES)}")  # fmt: skip
    parser.add_argument("--allocators", default=",".join(ALLOCATORS), help=f"comma-separated: {', '.join(ALLOCATORS)}")
    parser.add_argument("--one", choices=ENGINES, help=argparse.SUPPRESS)  # a child: one engine, JSON on stdout
    args = parser.parse_args(argv)
    if args.one:
        result = one(args.one, args.steps)
        print(json.dumps(result))
        return result
    results = {}
    for allocator in args.allocators.split(","):
        for engine in args.engines.split(","):
            command = [sys.executable, "-m", "jobs.bench.train_engine", "--one", engine, "--steps", str(args.steps)]
            done = subprocess.run(command, env=allocator_env(allocator), capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"{allocator} / {engine} failed:\n{done.stderr[-3000:]}")
            results[f"{allocator} / {engine}"] = json.loads(done.stdout.strip().splitlines()[-1])
    first = next(iter(results.values()))
    header = f"ms per step ({ROWS} rows, {first['real_tokens_per_step']:.0f} real tokens)"
    print(f"\n{header:<40} {'forward':>8} {'backward':>9} {'optimizer':>9} {'step':>7} {'faults/step':>12}")
    for name, ms in results.items():
        print(f"{name:<40} {ms['forward']:>8} {ms['backward']:>9} {ms['optimizer']:>9} {ms['step']:>7} "
              f"{ms['minor_faults_per_step']:>12}")  # fmt: skip
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
