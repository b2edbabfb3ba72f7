"""Optimizer parameter groups (differential LR, layer-wise decay, no decay on norms/biases) and schedules."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

from mtl.config import ConfigError, OptimConfig
from mtl.model.multitask import MultiTaskModel
from mtl.model.strategies import is_embedding, layer_index, num_encoder_layers

# optim.schedule -> transformers scheduler name (each warms up linearly first).
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def _backbone_depth_scale(parameter_name: str, num_layers: int, layer_decay: float) -> tuple[str, float]:
    """(group label, LR multiplier): top layer 1, each lower layer x decay, embeddings lowest."""
    if is_embedding(parameter_name):
        return "embeddings", layer_decay**num_layers
    index = layer_index(parameter_name)
    if index is None:
        return "top", 1.0
    return f"layer{index}", layer_decay ** (num_layers - 1 - index)


def parameter_groups(model: MultiTaskModel, optim: OptimConfig) -> list[dict]:
    """AdamW groups over trainable parameters only; each group carries a readable `name`."""
    num_layers = num_encoder_layers(model)
    groups: dict[tuple[str, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("heads."):
            label, lr = "head:" + name.split(".")[1], optim.head_lr
        else:
            depth, scale = _backbone_depth_scale(name, num_layers, optim.layer_decay)
            label, lr = f"backbone:{depth}", optim.backbone_lr * scale
        decays = parameter.ndim >= 2  # biases and LayerNorm weights are 1-D: no weight decay
        key = (label, decays)
        if key not in groups:
            groups[key] = {
                "name": label if decays else f"{label}/no_decay",
                "params": [],
                "lr": lr,
                "weight_decay": optim.weight_decay if decays else 0.0,
            }
        groups[key]["params"].append(parameter)
    if not groups:
        raise ConfigError("nothing to train: no parameter requires a gradient (check finetune.*)")
    return list(groups.values())


def build_optimizer(model: MultiTaskModel, optim: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, optim), fused=optim.fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int) -> LambdaLR:
    """Linear warm-up, then `optim.schedule`; one multiplier for every group, so their LR ratios hold throughout."""
    return get_scheduler(
        SCHEDULES[optim.schedule],
        optimizer,
        num_warmup_steps=int(optim.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
