"""The multi-task model: shared encoder -> pooling -> one linear head per task."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mtl.config import Config, ConfigError
from mtl.model.backbone import load_encoder, starting_encoder_dir
from mtl.model.heads import build_heads, check_head, load_head_into
from mtl.model.pooling import normalize, pool, resolve_pooling


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, pooling: str, label_counts: dict[str, int]):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.heads = build_heads(encoder.config.hidden_size, label_counts)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The sentence vector that feeds every head, not normalised."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        # Accumulate in fp32 like inference (a bf16 sum over 128 tokens loses digits), then back to the heads' dtype.
        return pool(self.pooling, hidden.float(), attention_mask).to(hidden.dtype)  # (B, H)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_pooled: bool = False):
        """Logits `(B, n_labels)` of every task for every row; with `return_pooled`, also the pooled `(B, H)`."""
        pooled = self.pooled(input_ids, attention_mask)
        logits = {name: head(pooled) for name, head in self.heads.items()}
        return (logits, pooled) if return_pooled else logits

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised sentence embeddings `(B, H)` for similarity."""
        return normalize(self.pooled(input_ids, attention_mask))


def build_model(config: Config) -> MultiTaskModel:
    """Encoder from `model.backbone` (or `model.init_from`), pooling resolved, heads for `tasks`."""
    source = starting_encoder_dir(config.model)
    encoder = load_encoder(config.model, source)
    pooling = resolve_pooling(config.model.pooling, source)
    torch.manual_seed(config.train.seed)
    model = MultiTaskModel(encoder, pooling, {name: len(task.labels) for name, task in config.tasks.items()})
    if config.model.init_from:
        load_init_heads(model, config, source)
    return model


def load_init_heads(model: MultiTaskModel, config: Config, source: Path) -> None:
    """Heads of `model.init_from` for the tasks it has, checked by label names, not only by shape.

    A task the export lacks starts from random weights (said once); if that task is frozen, it is an error.
    """
    from mtl.export_format import head_path, read_manifest, task_labels

    manifest = read_manifest(source)
    exported = task_labels(manifest)
    for name, head in model.heads.items():
        labels = list(config.tasks[name].labels)
        if name not in exported:
            if name in config.finetune.freeze_heads:
                raise ConfigError(
                    f"model.init_from={source}: has no head for task {name!r} (it has {list(exported)}), "
                    f"but finetune.freeze_heads keeps {name!r} fixed: it would be exported untrained"
                )
            print(f"model.init_from: {source} has no task {name!r}; its head starts from random weights")
            continue
        if exported[name] != labels:
            raise ConfigError(
                f"model.init_from={source}: task {name!r} was trained with labels {exported[name]}, "
                f"tasks.{name}.labels is {labels}; list them in the export's order"
            )
        path = head_path(source, name)
        if "encoder_fingerprint" in manifest:  # exports before format 2 carry no head metadata
            check_head(path, name, labels, manifest["encoder_fingerprint"])
        load_head_into(head, path)
