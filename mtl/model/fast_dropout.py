"""Dropout with a cheaper mask on CPU: 16-bit draws from NumPy's PCG64 instead of torch's per-element bernoulli.

On a CPU node torch's `dropout` spends ~3.8 ms drawing the mask of a 64 x 25 x 384 bf16 activation (MT19937, one
draw per element), five times the 384 x 384 matmul that produced it; a BERT layer has two such dropouts and the
embeddings one more, so in training they were about a third of the forward pass. `FastDropout` keeps every element
with probability 1 - p, quantised to 1/65,536 (p = 0.1 -> 0.100006), and scales kept ones by 1/(1 - p) as
`nn.Dropout`; the generator is seeded from torch's default generator on every call, so `set_seed` still makes a
run repeatable. In eval mode, on other devices, in place, under `torch.compile` (whose graph a NumPy call would
break), or for p within 1/131,072 of 0 or 1 it is `nn.Dropout` itself.
(`python -m jobs.bench.train_engine --engines deepspeed,deepspeed+fast_dropout` times both.)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

LEVELS = 65536  # 16-bit draws


def dropout_scale(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """`shape` of 0 (dropped) and 1/(1 - p) (kept), each kept with probability 1 - round(p * 65536) / 65536."""
    seed = int(torch.randint(0, 2**62, (1,)).item())  # torch's RNG drives it: set_seed reproduces the masks
    half = LEVELS // 2  # signed 16-bit draws: torch compares int16, not uint16
    draws = np.random.default_rng(seed).integers(-half, half, size=math.prod(shape), dtype=np.int16)
    kept = torch.from_numpy(draws).view(shape) >= round(p * LEVELS) - half
    scale = torch.tensor(1.0 / (1.0 - p), dtype=dtype)
    return torch.where(kept, scale, torch.zeros((), dtype=dtype))


class FastDropout(nn.Dropout):
    """`nn.Dropout` whose training-mode CPU mask comes from `dropout_scale`."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        cheap = self.training and hidden.device.type == "cpu" and not self.inplace and not torch.compiler.is_compiling()
        if not cheap or round(self.p * LEVELS) in (0, LEVELS):  # p that 16 bits cannot tell from 0 or 1: torch's
            return super().forward(hidden)
        return hidden * dropout_scale(hidden.shape, self.p, hidden.dtype)


def use_fast_dropout(model: nn.Module) -> int:
    """Every `nn.Dropout` in `model` becomes a `FastDropout` (same `p`; modules that only lend their `p` to attention
    kernels are unaffected); returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            count += 1
    return count
