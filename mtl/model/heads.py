"""Task heads: one `Linear(hidden, n_labels)` per task, fed the pooled, un-normalised vector.

On disk a head is `heads/<task>.safetensors` with `weight (n_labels, hidden)` and `bias (n_labels,)`, and in its
safetensors metadata the task name, the label names in id order and the fingerprint of the encoder it was trained
with (`weights_fingerprint`). Loading checks all three against what the reader expects, so a head for another task,
another label order or another encoder is refused by name, never served as a plausible-looking wrong answer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from mtl.errors import UserError


def build_heads(hidden_size: int, label_counts: dict[str, int]) -> nn.ModuleDict:
    return nn.ModuleDict({name: nn.Linear(hidden_size, count) for name, count in label_counts.items()})


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's weights by name, at bf16 resolution: a bf16 run's frozen copy of an fp32 encoder is the
    same encoder (identical in bf16), any training step that moves the weights is a different one."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:32]


def save_head(head: nn.Linear, path: Path, task: str, labels: list[str], encoder: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"weight": head.weight.detach().float().contiguous(), "bias": head.bias.detach().float().contiguous()}
    save_file(tensors, str(path), metadata={"task": task, "labels": json.dumps(list(labels)), "encoder": encoder})


def head_metadata(path: Path) -> dict:
    """The head file's task, labels and encoder fingerprint (empty for heads written before they carried them)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return {**metadata, "labels": json.loads(metadata["labels"])} if "labels" in metadata else metadata


def check_head(path: Path, task: str, labels: list[str], encoder: str) -> None:
    """Refuse a head file written for another task, label order or encoder, naming the mismatch."""
    found = head_metadata(path)
    if not found:
        raise UserError(f"{path}: head file carries no task/labels/encoder metadata (written before they were "
                         "recorded); re-export it")  # fmt: skip
    problems = []
    if found.get("task") != task:
        problems.append(f"it is the head of task {found.get('task')!r}, not {task!r}")
    if found.get("labels") != list(labels):
        problems.append(f"its labels are {found.get('labels')}, expected {list(labels)} (in id order)")
    if found.get("encoder") != encoder:
        problems.append(f"it was trained with encoder {found.get('encoder')}, this encoder is {encoder}")
    if problems:
        raise UserError(f"{path}: " + "; ".join(problems))


def load_head_into(head: nn.Linear, path: Path) -> None:
    """Copy a saved head into `head`, checking shapes against the config's labels."""
    tensors = load_file(str(path))
    expected = {"weight": tuple(head.weight.shape), "bias": tuple(head.bias.shape)}
    found = {name: tuple(tensors[name].shape) for name in expected if name in tensors}
    if found != expected:
        raise UserError(f"{path}: head tensors {found} do not match the configured labels {expected}")
    with torch.no_grad():
        head.weight.copy_(tensors["weight"])
        head.bias.copy_(tensors["bias"])
