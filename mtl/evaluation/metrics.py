"""Validation metrics over label/prediction arrays (scikit-learn, scipy), one plain dict per task.

classification and pair_classification: `classification_metrics`; similarity: `similarity_metrics`; multilabel:
`multilabel_metrics` with per-label thresholds from `choose_thresholds`. Training's validation and the evaluation
of an export both call these, so a figure in `mtl.json` and one printed by `jobs.evaluate` mean the same.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

# Candidate thresholds for a multilabel label: 0.05, 0.10, ..., 0.95.
THRESHOLD_GRID = np.round(np.arange(1, 20) * 0.05, 2)
DEFAULT_THRESHOLD = 0.5


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


def similarity_metrics(cosines: np.ndarray, scores: np.ndarray) -> dict:
    """Spearman and Pearson correlation of predicted cosines with gold scores, and the row count. Fewer than two
    rows, or a constant side (no ranking to compare), gives 0.0 rather than NaN (which JSON cannot carry)."""
    cosines = np.asarray(cosines, dtype=np.float64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    assert cosines.shape == scores.shape, f"{cosines.shape} cosines for {scores.shape} scores"
    if cosines.size < 2 or np.ptp(cosines) == 0 or np.ptp(scores) == 0:
        return {"spearman": 0.0, "pearson": 0.0, "count": int(cosines.size)}
    return {
        "spearman": float(spearmanr(cosines, scores).statistic),
        "pearson": float(pearsonr(cosines, scores).statistic),
        "count": int(cosines.size),
    }


def _multihot(targets: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    targets = np.asarray(targets).astype(bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    assert targets.shape == probabilities.shape, f"targets {targets.shape} vs probabilities {probabilities.shape}"
    return targets, probabilities


def multilabel_metrics(targets_multihot: np.ndarray, probabilities: np.ndarray, thresholds: list[float]) -> dict:
    """Micro- and macro-F1 of the label sets chosen by `probabilities (N, L) >= thresholds (L,)` against multi-hot
    targets `(N, L)`, and the row count. Macro-F1 averages over the labels present in targets or predictions."""
    targets, probabilities = _multihot(targets_multihot, probabilities)
    if targets.shape[0] == 0:
        return {"micro_f1": 0.0, "macro_f1": 0.0, "count": 0}
    predictions = probabilities >= np.asarray(thresholds, dtype=np.float64)[None, :]
    present = np.flatnonzero(targets.any(axis=0) | predictions.any(axis=0))
    macro = f1_score(targets, predictions, labels=present, average="macro", zero_division=0) if present.size else 0.0
    return {
        "micro_f1": float(f1_score(targets, predictions, average="micro", zero_division=0)),
        "macro_f1": float(macro),
        "count": int(targets.shape[0]),
    }


def choose_thresholds(targets_multihot: np.ndarray, probabilities: np.ndarray) -> list[float]:
    """Per label, the threshold on `THRESHOLD_GRID` that maximises that label's F1 on these rows (ties: the one
    nearest 0.5); `DEFAULT_THRESHOLD` for a label without positives (nothing to fit)."""
    targets, probabilities = _multihot(targets_multihot, probabilities)
    predicted = probabilities[:, :, None] >= THRESHOLD_GRID[None, None, :]  # (N, L, G)
    positive = targets[:, :, None]
    true_positives = (predicted & positive).sum(axis=0)  # (L, G)
    false_positives = (predicted & ~positive).sum(axis=0)
    false_negatives = (~predicted & positive).sum(axis=0)
    f1 = 2 * true_positives / np.maximum(2 * true_positives + false_positives + false_negatives, 1)  # (L, G)
    # Among equal F1s prefer the threshold nearest 0.5: a wide plateau says little about where its edge is.
    order = np.argsort(np.abs(THRESHOLD_GRID - DEFAULT_THRESHOLD), kind="stable")
    best = order[np.argmax(f1[:, order], axis=1)]  # (L,)
    has_positives = targets.any(axis=0)
    return [float(THRESHOLD_GRID[g]) if has_positives[label] else DEFAULT_THRESHOLD for label, g in enumerate(best)]
