"""Validation during training: each task's loss and the metrics of its type over every rank's rows.

classification, pair_classification: accuracy, macro-F1, confusion; similarity: Spearman and Pearson of the
cosine with the gold score; multilabel: micro- and macro-F1 at per-label thresholds chosen on these rows (they go
into the export).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.distributed as dist

from mtl.config import TYPE_METRICS, Config
from mtl.evaluation.metrics import choose_thresholds, classification_metrics, multilabel_metrics, similarity_metrics
from mtl.train.losses import label_bits, row_losses


def _task_rows(output: torch.Tensor, inputs: dict, mask: torch.Tensor, task) -> dict[str, np.ndarray]:
    """What scoring one task needs from this batch's rows of it (numpy, on the CPU)."""
    labels = inputs["labels"][mask]
    scores = inputs.get("scores")
    loss = row_losses(output, inputs["labels"], scores, task, mask)[mask]
    rows = {"loss": loss.float().cpu().numpy()}
    if task.type == "similarity":
        rows.update(cosine=output[mask].float().cpu().numpy(), score=scores[mask].float().cpu().numpy())
    elif task.type == "multilabel":
        rows.update(
            probabilities=torch.sigmoid(output[mask].float()).cpu().numpy(),
            targets=label_bits(labels, output.shape[-1]).cpu().numpy(),
        )
    else:
        rows.update(label=labels.cpu().numpy(), prediction=output[mask].float().argmax(dim=-1).cpu().numpy())
    return rows


def task_metrics(rows: dict[str, np.ndarray], task) -> dict:
    """One task's validation metrics from its gathered rows."""
    count = len(rows.get("loss", ()))
    loss = float(rows["loss"].mean()) if count else 0.0
    if task.type == "similarity":
        return {"loss": loss, **similarity_metrics(rows.get("cosine", np.zeros(0)), rows.get("score", np.zeros(0)))}
    if task.type == "multilabel":
        width = len(task.labels)
        targets = rows.get("targets", np.zeros((0, width)))
        probabilities = rows.get("probabilities", np.zeros((0, width)))
        thresholds = choose_thresholds(targets, probabilities)
        return {"loss": loss, **multilabel_metrics(targets, probabilities, thresholds), "thresholds": thresholds}
    labels, predictions = rows.get("label", np.zeros(0)), rows.get("prediction", np.zeros(0))
    return {"loss": loss, **classification_metrics(labels, predictions, len(task.labels))}


def evaluate(engine, batches: Iterable[dict], config: Config, world_size: int) -> dict:
    """One pass over this rank's validation batches; rows from every rank are gathered before scoring.

    `batches` yield device tensors (`input_ids`, `attention_mask`, `pair_rows`, `task_ids`, `labels`, `scores`).
    Validation sets are small, so ranks exchange per-row results and scikit-learn/scipy score them once.
    """
    parts: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in config.task_names}
    was_training = engine.module.training
    engine.module.eval()
    with torch.no_grad():
        for inputs in batches:
            outputs = engine(inputs["input_ids"], inputs["attention_mask"], inputs.get("pair_rows"))
            for task_id, name in enumerate(config.task_names):
                mask = inputs["task_ids"] == task_id
                if not mask.any():
                    continue
                for key, value in _task_rows(outputs[name], inputs, mask, config.tasks[name]).items():
                    parts[name].setdefault(key, []).append(value)
    engine.module.train(was_training)
    local = {name: {key: np.concatenate(values) for key, values in task.items()} for name, task in parts.items()}
    if world_size > 1:
        gathered: list[dict] = [None] * world_size  # type: ignore[list-item]
        dist.all_gather_object(gathered, local)
        local = {
            name: {
                key: np.concatenate([part[name][key] for part in gathered if key in part[name]])
                for key in set().union(*(part[name] for part in gathered))
            }  # fmt: skip
            for name in config.task_names
        }
    return {name: task_metrics(local[name], config.tasks[name]) for name in config.task_names}


def selection_score(metrics: dict, config: Config) -> float:
    """What "best checkpoint" means: the mean of `train.select_metrics` (default: each task's primary metric:
    macro-F1, similarity Spearman, multilabel micro-F1)."""
    chosen = config.train.select_metrics or [
        f"{name}.{TYPE_METRICS[task.type][0]}" for name, task in config.tasks.items()
    ]
    values = []
    for entry in chosen:
        name, _, metric = entry.partition(".")
        value = metrics.get(name, {}).get(metric)
        values.append(0.0 if value is None or not np.isfinite(value) else float(value))
    return float(np.mean(values))
