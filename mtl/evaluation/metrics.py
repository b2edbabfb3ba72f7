"""Metrics as plain functions over arrays: accuracy, macro-F1, confusion matrix, Spearman."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """`matrix[true, predicted]` counts."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def accuracy_from_confusion(matrix: np.ndarray) -> float:
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else 0.0


def macro_f1_from_confusion(matrix: np.ndarray) -> float:
    """Mean F1 over the classes that occur in labels or predictions."""
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    present = (predicted + actual) > 0
    if not present.any():
        return 0.0
    f1 = 2 * true_positive / np.maximum(predicted + actual, 1)
    return float(f1[present].mean())


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict:
    matrix = confusion_matrix(labels, predictions, num_classes)
    return {
        "accuracy": accuracy_from_confusion(matrix),
        "macro_f1": macro_f1_from_confusion(matrix),
        "count": int(matrix.sum()),
        "confusion": matrix.tolist(),
    }


def spearman(predicted: np.ndarray, gold: np.ndarray) -> float:
    return float(spearmanr(predicted, gold).statistic)
