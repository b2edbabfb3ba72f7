"""What a run tells its user while it trains: throughput, one progress line per logged step, flat metric names."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

# Where a training step goes, in the order a step meets them.
PHASES = ("data_wait", "tokenize", "forward", "teacher", "backward", "grad_sync", "optimizer")


class PhaseTimer:
    """Exclusive wall seconds per named phase: a phase entered inside another pauses the outer one.

    `sync` (e.g. `torch.cuda.synchronize`) runs at every boundary so asynchronous GPU work is charged to the phase
    that launched it; on CPU there is nothing to wait for.
    """

    def __init__(self, sync: Callable[[], None] | None = None):
        self.seconds: dict[str, float] = defaultdict(float)
        self._sync = sync
        self._stack: list[str] = []
        self._mark = 0.0

    def _now(self) -> float:
        if self._sync:
            self._sync()
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        now = self._now()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._mark
        self._stack.append(name)
        self._mark = now
        try:
            yield
        finally:
            now = self._now()
            self.seconds[self._stack.pop()] += now - self._mark
            self._mark = now

    def timed(self, name: str, function: Callable) -> Callable:
        """`function` wrapped so every call is charged to phase `name`."""

        def wrapper(*args, **kwargs):
            with self.phase(name):
                return function(*args, **kwargs)

        return wrapper

    def take(self) -> dict[str, float]:
        """The seconds since the last `take`, per phase."""
        taken, self.seconds = dict(self.seconds), defaultdict(float)
        return taken


class Throughput:
    """Steady-state samples/s, real and padded tokens/s, and the seconds per step of each phase (`PHASES`).

    Tokens are this rank's times the world size (ranks see batches of similar shape): real tokens are what the model
    needs, padded tokens what it computes. The first `warmup_steps` are skipped, except in `train_s`: the seconds of
    every step (what another trainer gets for an equal-time comparison).
    """

    def __init__(self, warmup_steps: int = 2):
        self.warmup_steps = warmup_steps
        self.seen = 0
        self.step_seconds = self.all_seconds = 0.0
        self.rows = self.tokens = self.real_tokens = 0
        self.phases: dict[str, float] = defaultdict(float)

    def step(self, seconds: float, rows: int, tokens: int, real_tokens: int, phases: dict[str, float]) -> None:
        self.seen += 1
        self.all_seconds += seconds
        if self.seen > self.warmup_steps:
            self.step_seconds += seconds
            self.rows += rows
            self.tokens += tokens
            self.real_tokens += real_tokens
            for name, value in phases.items():
                self.phases[name] += value

    def as_dict(self) -> dict:
        if not self.step_seconds:
            return {}
        steps = self.seen - self.warmup_steps
        return {
            "samples_per_s": self.rows / self.step_seconds,
            "real_tokens_per_s": self.real_tokens / self.step_seconds,
            "padded_tokens_per_s": self.tokens / self.step_seconds,
            "padded_per_real_token": self.tokens / max(self.real_tokens, 1),
            "data_wait_fraction": self.phases.get("data_wait", 0.0) / self.step_seconds,
            "step_ms": 1000 * self.step_seconds / steps,
            "phase_ms": {name: 1000 * self.phases.get(name, 0.0) / steps for name in PHASES},
            "steps_measured": steps,
            "train_s": self.all_seconds,
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
