"""Task heads: one `Linear` per task that has one, fed pooled, un-normalised vectors.

- classification, multilabel: `Linear(hidden, n_labels)` over the text's vector (softmax / per-label sigmoid);
- pair_classification: `Linear(4 * hidden, n_labels)` over `pair_features(u, v)` = [u, v, |u - v|, u * v] of the two
  texts' vectors (each text is encoded alone, so serving stays one encoder pass per text);
- similarity: no head, the score is the cosine of the two normalised embeddings.

On disk a head is `heads/<task>.safetensors` with `weight (n_labels, in)` and `bias (n_labels,)`, and in its
safetensors metadata the task name, its type, the label names in id order and the fingerprint of the encoder it was
trained with (`weights_fingerprint`). Loading checks them against what the reader expects, so a head for another
task, type, label order or encoder is refused by name, never served as a plausible-looking wrong answer.
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


def head_input_size(hidden_size: int, task_type: str) -> int:
    return 4 * hidden_size if task_type == "pair_classification" else hidden_size


def pair_features(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """`(B, 4H)` features of two texts' pooled vectors `(B, H)` each: [u, v, |u - v|, u * v]."""
    return torch.cat([left, right, (left - right).abs(), left * right], dim=-1)


def build_heads(hidden_size: int, specs: dict[str, tuple[str, int]]) -> nn.ModuleDict:
    """One head per task that has one: task name -> (type, number of labels); similarity tasks get none."""
    return nn.ModuleDict({
        name: nn.Linear(head_input_size(hidden_size, kind), count)
        for name, (kind, count) in specs.items()
        if kind != "similarity"
    })  # fmt: skip


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's weights by name, at bf16 resolution: a bf16 run's frozen copy of an fp32 encoder is the
    same encoder (identical in bf16), any training step that moves the weights is a different one."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:32]


def save_head(
    head: nn.Linear, path: Path, task: str, labels: list[str], encoder: str, task_type: str = "classification"
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"weight": head.weight.detach().float().contiguous(), "bias": head.bias.detach().float().contiguous()}
    metadata = {"task": task, "type": task_type, "labels": json.dumps(list(labels)), "encoder": encoder}
    save_file(tensors, str(path), metadata=metadata)


def head_metadata(path: Path) -> dict:
    """The head file's task, labels and encoder fingerprint (empty for heads written before they carried them)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return {**metadata, "labels": json.loads(metadata["labels"])} if "labels" in metadata else metadata


def check_head(path: Path, task: str, labels: list[str], encoder: str, task_type: str = "classification") -> None:
    """Refuse a head file written for another task, type, label order or encoder, naming the mismatch (heads from
    before task types carry no type: classification)."""
    found = head_metadata(path)
    if not found:
        raise UserError(f"{path}: head file carries no task/labels/encoder metadata (written before they were "
                         "recorded); re-export it")  # fmt: skip
    problems = []
    if found.get("task") != task:
        problems.append(f"it is the head of task {found.get('task')!r}, not {task!r}")
    if found.get("type", "classification") != task_type:
        problems.append(f"it is a {found.get('type', 'classification')} head, task {task!r} is {task_type}")
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
