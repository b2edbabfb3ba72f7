"""Validation during training: per-task loss, accuracy, macro-F1 and confusion over every rank's rows."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mtl.config import Config
from mtl.evaluation.metrics import classification_metrics


def evaluate(engine, batches: Iterable[dict], config: Config, world_size: int) -> dict:
    """One pass over this rank's validation batches; rows from every rank are gathered before scoring.

    `batches` yield device tensors (`input_ids`, `attention_mask`, `task_ids`, `labels`). Validation sets are
    small, so ranks exchange per-row results and scikit-learn scores them once.
    """
    rows: dict[str, list[np.ndarray]] = {"task_id": [], "label": [], "prediction": [], "loss": []}
    was_training = engine.module.training
    engine.module.eval()
    with torch.no_grad():
        for inputs in batches:
            logits = engine(inputs["input_ids"], inputs["attention_mask"])
            for task_id, name in enumerate(config.task_names):
                mask = inputs["task_ids"] == task_id
                if not mask.any():
                    continue
                task_logits, labels = logits[name][mask].float(), inputs["labels"][mask]
                rows["task_id"].append(np.full(int(mask.sum()), task_id))
                rows["label"].append(labels.cpu().numpy())
                rows["prediction"].append(task_logits.argmax(dim=-1).cpu().numpy())
                rows["loss"].append(F.cross_entropy(task_logits, labels, reduction="none").cpu().numpy())
    engine.module.train(was_training)
    local = {key: np.concatenate(parts) if parts else np.zeros(0) for key, parts in rows.items()}
    if world_size > 1:
        gathered: list[dict] = [None] * world_size  # type: ignore[list-item]
        dist.all_gather_object(gathered, local)
        local = {key: np.concatenate([part[key] for part in gathered]) for key in local}
    metrics = {}
    for task_id, name in enumerate(config.task_names):
        mask = local["task_id"] == task_id
        scores = classification_metrics(local["label"][mask], local["prediction"][mask], len(config.tasks[name].labels))
        metrics[name] = {"loss": float(local["loss"][mask].mean()) if mask.any() else 0.0, **scores}
    return metrics


def selection_score(metrics: dict) -> float:
    """What "best checkpoint" means: the mean over tasks of validation macro-F1."""
    return float(np.mean([task["macro_f1"] for task in metrics.values()]))
