"""Per-task metrics of an export on validated rows (`mtl.data.contract`: `text`, `text_pair`, `task_id`, `label`,
`score`), each row scored by its own task's output (`ExportedModel.outputs`) and measured by its task type's metrics
(`mtl.evaluation.metrics`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from mtl.config import PAIR_TYPES
from mtl.evaluation.metrics import classification_metrics, multilabel_metrics, similarity_metrics
from mtl.inference.exported_model import ExportedModel


def label_bits(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """Multilabel rows' label bit sets (bit i = label i) as multi-hot `(N, num_labels)` int arrays."""
    return (labels[:, None] >> np.arange(num_labels, dtype=np.int64)[None, :]) & 1


def _column(rows: pa.Table, name: str, default) -> np.ndarray:
    """A column as a numpy array, or `default` in every row where validated rows from before task types lack it."""
    if name in rows.column_names:
        return rows.column(name).to_numpy(zero_copy_only=False)
    return np.full(rows.num_rows, default, dtype=object if default is None else np.float64)


def _metrics(info: dict, outputs: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict:
    """One task's metrics by its type: `outputs` from `ExportedModel.outputs`, the rows' labels and scores."""
    kind = info["type"]
    if kind == "similarity":
        return similarity_metrics(outputs, scores)
    if kind == "multilabel":
        targets = label_bits(labels, len(info["labels"]))
        return multilabel_metrics(targets, outputs, info["thresholds"])
    return classification_metrics(labels, outputs.argmax(axis=1), len(info["labels"]))


def task_report(model: ExportedModel, rows: pa.Table, task_names: list[str]) -> dict:
    """Task -> its type's metrics: classification and pair_classification accuracy, macro-F1, count and confusion;
    similarity Spearman and Pearson of cosine vs score, count; multilabel micro/macro-F1 at the export's thresholds,
    count. One encoder pass over every row's text and every pair row's second text."""
    task_ids = rows.column("task_id").to_numpy()
    labels = rows.column("label").to_numpy()
    scores = _column(rows, "score", np.nan).astype(np.float64)
    pairs = _column(rows, "text_pair", None)
    pair_rows = np.flatnonzero(pairs != None)  # noqa: E711 (element-wise on an object array)
    texts = rows.column("text").to_pylist()
    pooled = model.encode(texts + pairs[pair_rows].tolist())  # (N + P, H), length-sorted batches
    first = pooled[: len(texts)]  # (N, H)
    second = first.clone()  # rows without a second text keep their own vector (no pair task reads them)
    second[torch.from_numpy(pair_rows)] = pooled[len(texts) :]
    report = {}
    for task_id, name in enumerate(task_names):
        mask = task_ids == task_id
        info = model.info[name]
        if info["type"] in PAIR_TYPES:
            unpaired = int((pairs[mask] == None).sum())  # noqa: E711
            assert not unpaired, f"{unpaired} validated row(s) of pair task {name!r} have no text_pair"
        selected = torch.from_numpy(mask)
        outputs = model.outputs([name], first[selected], second[selected])[name]
        report[name] = {"type": info["type"], **_metrics(info, outputs, labels[mask], scores[mask])}
    return report


classification_report = task_report  # the name mtl.train.wise_ft imports
