"""Per-task classification metrics of an export on validated rows (`text`, `task_id`, `label`)."""

from __future__ import annotations

import pyarrow as pa
import torch

from mtl.evaluation.metrics import classification_metrics
from mtl.inference.exported_model import ExportedModel


def classification_report(model: ExportedModel, rows: pa.Table, task_names: list[str]) -> dict:
    """Task -> accuracy, macro-F1, count and confusion; each row is scored by its own task's head."""
    task_ids = rows.column("task_id").to_numpy()
    labels = rows.column("label").to_numpy()
    pooled = model.encode(rows.column("text").to_pylist())  # (N, H), length-sorted batches
    report = {}
    for task_id, name in enumerate(task_names):
        mask = task_ids == task_id
        scores = model.head_probabilities(pooled[torch.from_numpy(mask)], [name])[name]  # (rows of task, n_labels)
        report[name] = classification_metrics(labels[mask], scores.argmax(axis=1), len(model.labels[name]))
    return report
