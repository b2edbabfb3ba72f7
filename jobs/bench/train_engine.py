"""Benchmark: one optimizer step of the same model and batch in one process, plain PyTorch vs DeepSpeed's engine.

    python -m jobs.bench.train_engine [--steps 25] [--window 16]

Why `jobs.bench.train --anchor hf-trainer` finds the Hugging Face Trainer faster than our path on a CPU node: the
model is the Trainer anchor's (`jobs/bench/anchor_hf_trainer.py`: MiniLM, mean pooling, a head), 64 SST-2/TREC rows
per step drawn length-grouped (64 x `--window` rows sorted by length, one 64-row slice of them: about the padding
of the Trainer's grouping), max 64 word pieces, 2 threads, no Ray. (a) `torch.autocast` bf16 over fp32 weights with
fused AdamW (what the Trainer does); (b) DeepSpeed bf16 (bf16 weights, its fp32 master copy, ZeRO-0, gradient
clipping 1.0 as our recipe) with the same fused AdamW. Prints ms per step in forward, backward and optimizer.
Needs ../shared/data/mixed.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pyarrow.parquet as pq
import torch

ROWS = 64
DATA = "../shared/data/mixed/train-00000.parquet"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--window", type=int, default=16, help="rows sorted together = window x 64")
    args = parser.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"}.items():  # fmt: skip
        os.environ.setdefault(key, value)
    from transformers import AutoTokenizer

    from jobs.bench.anchor_hf_trainer import MultiTaskModel  # the anchor's model, not ours: engines are compared
    from mtl.model.backbone import resolve_backbone

    torch.set_num_threads(2)
    torch.manual_seed(0)
    backbone = str(resolve_backbone("sentence-transformers/all-MiniLM-L6-v2"))
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    texts = pq.read_table(DATA).column("text").to_pylist()
    rng = np.random.default_rng(0)

    def batch():
        window = sorted((texts[i] for i in rng.choice(len(texts), ROWS * args.window)), key=len)
        start = int(rng.integers(0, len(window) - ROWS + 1))
        tokens = tokenizer(window[start : start + ROWS], padding=True, truncation=True, max_length=64,
                           return_tensors="pt")  # fmt: skip
        return tokens["input_ids"], tokens["attention_mask"], torch.randint(0, 2, (ROWS,))

    def loss_of(model, ids, mask, labels):
        return torch.nn.functional.cross_entropy(model.heads[0](model.pooled(ids, mask)).float(), labels)

    def timed(forward, backward, step) -> dict:
        totals = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        for index in range(args.steps + 3):
            ids, mask, labels = batch()
            began = time.perf_counter()
            loss = forward(ids, mask, labels)
            forwarded = time.perf_counter()
            backward(loss)
            backwarded = time.perf_counter()
            step()
            if index >= 3:  # warm-up
                totals["forward"] += forwarded - began
                totals["backward"] += backwarded - forwarded
                totals["optimizer"] += time.perf_counter() - backwarded
        ms = {phase: round(value / args.steps * 1000, 1) for phase, value in totals.items()}
        return {**ms, "step": round(sum(ms.values()), 1)}

    results = {}
    model = MultiTaskModel(backbone, [2, 6], [1.0, 2.0]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def autocast_forward(ids, mask, labels):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_of(model, ids, mask, labels)

    def plain_step():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    results["plain: autocast bf16, fused AdamW"] = timed(autocast_forward, torch.Tensor.backward, plain_step)

    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    model = MultiTaskModel(backbone, [2, 6], [1.0, 2.0]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    config = {"train_micro_batch_size_per_gpu": ROWS, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
              "zero_optimization": {"stage": 0}, "gradient_clipping": 1.0, "steps_per_print": 10**9}  # fmt: skip
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    results["DeepSpeed: bf16, ZeRO-0, fused AdamW"] = timed(
        lambda ids, mask, labels: loss_of(engine.module, ids, mask, labels), engine.backward, engine.step
    )
    header = f"ms per step of {ROWS} rows"
    print(f"\n{header:<40} {'forward':>8} {'backward':>9} {'optimizer':>9} {'step':>7}")
    for name, ms in results.items():
        print(f"{name:<40} {ms['forward']:>8} {ms['backward']:>9} {ms['optimizer']:>9} {ms['step']:>7}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
