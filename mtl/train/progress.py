"""What a run tells its user while it trains: throughput, one progress line per logged step, flat metric names."""

from __future__ import annotations

import time


class Throughput:
    """Steady-state samples/s, padded tokens/s and the share of step time spent waiting for the next batch.

    Tokens are this rank's padded `input_ids` times the world size (ranks see batches of similar shape), so runs whose
    batches pad to different lengths can still be compared on work done. The first `warmup_steps` are skipped.
    """

    def __init__(self, warmup_steps: int = 2):
        self.warmup_steps = warmup_steps
        self.seen = 0
        self.step_seconds = self.wait_seconds = 0.0
        self.rows = self.tokens = 0
        self._wait = 0.0

    def waited(self, seconds: float) -> None:
        self._wait += seconds

    def step(self, seconds: float, rows: int, tokens: int) -> None:
        self.seen += 1
        if self.seen > self.warmup_steps:
            self.step_seconds += seconds
            self.wait_seconds += self._wait
            self.rows += rows
            self.tokens += tokens
        self._wait = 0.0

    def as_dict(self) -> dict:
        if not self.step_seconds:
            return {}
        return {
            "samples_per_s": self.rows / self.step_seconds,
            "padded_tokens_per_s": self.tokens / self.step_seconds,
            "data_wait_fraction": self.wait_seconds / self.step_seconds,
            "steps_measured": self.seen - self.warmup_steps,
        }


def shown_learning_rates(param_groups: list[dict]) -> dict[str, float]:
    """The LRs worth a progress column: each head's, and the backbone's top and bottom (the rest: TensorBoard)."""
    named = {group["name"]: group["lr"] for group in param_groups if not group["name"].endswith("/no_decay")}
    shown = {name: lr for name, lr in named.items() if name.startswith("head:")}
    backbone = sorted((lr, name) for name, lr in named.items() if not name.startswith("head:"))
    if backbone:
        shown["backbone_top"] = backbone[-1][0]
        if len(backbone) > 1:
            shown["backbone_bottom"] = backbone[0][0]
    return shown


def progress_line(step: int, total: int, per_task: dict[str, float], param_groups, rows: int, started: float) -> str:
    elapsed = time.perf_counter() - started
    rate = rows / max(elapsed, 1e-9)
    remaining = elapsed / max(step, 1) * (total - step)
    losses = " ".join(f"loss/{name}={value:.4f}" for name, value in per_task.items())
    lrs = " ".join(f"lr/{name}={lr:.2e}" for name, lr in shown_learning_rates(param_groups).items())
    return f"step {step}/{total} {losses} {lrs} samples/s={rate:.1f} eta={remaining:.0f}s"


def flatten(metrics: dict, prefix: str = "") -> dict:
    """Nested metrics -> `a/b/c` keys (lists such as confusion matrices are left out)."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        elif not isinstance(value, list):
            flat[f"{prefix}{key}"] = value
    return flat
