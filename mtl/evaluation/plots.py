"""PNG figures for run reports and evaluations (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_series(series: dict[str, tuple[list[int], list[float]]], title: str, ylabel: str, path: Path) -> Path:
    """One line per name: (steps, values)."""
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for name, (steps, values) in series.items():
        axes.plot(steps, values, marker="." if len(steps) < 30 else None, label=name)
    axes.set(title=title, xlabel="optimizer step", ylabel=ylabel)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_confusion(matrix: list[list[int]], labels: list[str], title: str, path: Path) -> Path:
    """Rows = true label, columns = predicted label, counts in the cells."""
    size = max(3.0, 0.6 * len(labels) + 1.5)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set(title=title, xlabel="predicted", ylabel="true")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            axes.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
