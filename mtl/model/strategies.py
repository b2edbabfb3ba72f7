"""Fine-tuning strategies: one function decides what trains, then reports it per group."""

from __future__ import annotations

import re

import peft
from torch import nn

from mtl.config import ConfigError, FinetuneConfig
from mtl.model.multitask import MultiTaskModel

_LAYER_INDEX = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
# Parts of an encoder that our pooling never reads: training them would leave unused gradients.
_UNUSED_ENCODER_PARTS = ("pooler.",)


def layer_index(parameter_name: str) -> int | None:
    """Encoder layer number in a parameter name (`encoder.layer.3.…` -> 3), None outside layers."""
    match = _LAYER_INDEX.search(parameter_name)
    return int(match.group(1)) if match else None


def is_embedding(parameter_name: str) -> bool:
    return "embeddings." in parameter_name


def num_encoder_layers(model: MultiTaskModel) -> int:
    return int(model.encoder.config.num_hidden_layers)


def apply_strategy(model: MultiTaskModel, finetune: FinetuneConfig) -> MultiTaskModel:
    """Set `requires_grad` for the strategy, wrap LoRA adapters if asked, then freeze `freeze_heads`."""
    strategy = finetune.strategy
    if strategy == "lora":
        lora = peft.LoraConfig(
            r=finetune.lora.r,
            lora_alpha=finetune.lora.alpha,
            lora_dropout=finetune.lora.dropout,
            target_modules=list(finetune.lora.target_modules),
        )
        try:
            model.encoder = peft.get_peft_model(model.encoder, lora)
        except ValueError as error:
            raise ConfigError(f"finetune.lora.target_modules={finetune.lora.target_modules}: {error}") from error
    else:
        num_layers = num_encoder_layers(model)
        if strategy == "partial" and finetune.unfreeze_last_n_layers > num_layers:
            raise ConfigError(
                f"finetune.unfreeze_last_n_layers={finetune.unfreeze_last_n_layers} but the backbone has "
                f"{num_layers} layers; use strategy=full to train all of them"
            )
        first_trained = num_layers - finetune.unfreeze_last_n_layers
        for name, parameter in model.encoder.named_parameters():
            if strategy == "full":
                trains = True
            elif strategy == "partial":
                index = layer_index(name)
                trains = index is not None and index >= first_trained
            else:
                trains = False
            frozen = name.startswith(_UNUSED_ENCODER_PARTS) or (finetune.freeze_embeddings and is_embedding(name))
            parameter.requires_grad_(trains and not frozen)
    for task_name, head in model.heads.items():
        head.requires_grad_(task_name not in finetune.freeze_heads)
    return model


def parameter_report(model: nn.Module) -> dict[str, dict[str, int]]:
    """Trainable and total parameter counts per group: `backbone`, `lora`, `head:<task>`."""
    report: dict[str, dict[str, int]] = {}
    for name, parameter in model.named_parameters():
        if name.startswith("heads."):
            group = "head:" + name.split(".")[1]
        elif "lora_" in name:
            group = "lora"
        else:
            group = "backbone"
        counts = report.setdefault(group, {"trainable": 0, "total": 0})
        counts["total"] += parameter.numel()
        counts["trainable"] += parameter.numel() if parameter.requires_grad else 0
    return report


def format_report(report: dict[str, dict[str, int]]) -> str:
    lines = [f"  {group:<24} {c['trainable']:>12,} / {c['total']:>12,} trainable" for group, c in report.items()]
    trainable = sum(c["trainable"] for c in report.values())
    total = sum(c["total"] for c in report.values())
    return "\n".join(["parameters:", *lines, f"  {'all':<24} {trainable:>12,} / {total:>12,} trainable"])
