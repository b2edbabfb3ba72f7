"""Evaluating an export: per-task classification metrics and STS-B Spearman of embedding cosine."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtl.data.contract import DataError
from mtl.evaluation.metrics import classification_metrics, spearman
from mtl.inference.exported_model import ExportedModel


def classification_report(model: ExportedModel, rows: pa.Table, task_names: list[str], batch_size: int = 64) -> dict:
    """`rows` are validated (`text`, `task_id`, `label`); returns task -> accuracy, macro-F1, confusion."""
    texts = rows.column("text").to_pylist()
    task_ids = rows.column("task_id").to_numpy()
    labels = rows.column("label").to_numpy()
    predictions = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), batch_size):
        pooled = model.pooled(texts[start : start + batch_size])
        scores = model.head_probabilities(pooled, task_names)
        for row in range(pooled.shape[0]):
            task = task_names[task_ids[start + row]]
            predictions[start + row] = int(scores[task][row].argmax())
    report = {}
    for task_id, name in enumerate(task_names):
        mask = task_ids == task_id
        report[name] = classification_metrics(labels[mask], predictions[mask], len(model.labels[name]))
    return report


def stsb_spearman(model: ExportedModel, path: str, pooling: str | None = None) -> float:
    """Spearman correlation of cosine(sentence1, sentence2) with the gold `score` column."""
    table = pq.read_table(path)
    missing = {"sentence1", "sentence2", "score"} - set(table.column_names)
    if missing:
        raise DataError(f"{path}: STS-B file lacks column(s) {sorted(missing)} (has {table.column_names})")
    left, right = table.column("sentence1").to_pylist(), table.column("sentence2").to_pylist()
    a = model.embed(left, pooling=pooling)
    b = model.embed(right, pooling=pooling)
    return spearman((a * b).sum(axis=1), table.column("score").to_numpy())
