"""Classification metrics over label/prediction arrays (scikit-learn), one dict per task."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict:
    """Accuracy, macro-F1 (over the classes present in labels or predictions), row count, confusion[true][pred]."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.size == 0:
        return {"accuracy": 0.0, "macro_f1": 0.0, "count": 0, "confusion": np.zeros((num_classes,) * 2, int).tolist()}
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "count": int(labels.size),
        "confusion": confusion_matrix(labels, predictions, labels=np.arange(num_classes)).tolist(),
    }
