"""Task heads: one `Linear(hidden, n_labels)` per task, fed the pooled, un-normalised vector.

On disk a head is `heads/<task>.safetensors` with `weight (n_labels, hidden)` and `bias (n_labels,)`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def build_heads(hidden_size: int, label_counts: dict[str, int]) -> nn.ModuleDict:
    return nn.ModuleDict({name: nn.Linear(hidden_size, count) for name, count in label_counts.items()})


def save_head(head: nn.Linear, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"weight": head.weight.detach().float().contiguous(), "bias": head.bias.detach().float()}
    save_file(tensors, str(path))


def load_head_into(head: nn.Linear, path: Path) -> None:
    """Copy a saved head into `head`, checking shapes against the config's labels."""
    tensors = load_file(str(path))
    expected = {"weight": tuple(head.weight.shape), "bias": tuple(head.bias.shape)}
    found = {name: tuple(tensors[name].shape) for name in expected if name in tensors}
    if found != expected:
        raise ValueError(f"{path}: head tensors {found} do not match the configured labels {expected}")
    with torch.no_grad():
        head.weight.copy_(tensors["weight"])
        head.bias.copy_(tensors["bias"])
