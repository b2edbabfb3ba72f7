"""Task sampling: how much of each task one epoch of mixed-task training sees."""

from __future__ import annotations

import numpy as np


def task_weights(counts: dict[str, int], strategy: str, temperature: float = 1.0) -> dict[str, float]:
    """Probability of each task: proportional to size, to size^(1/temperature), or uniform."""
    present = {name: count for name, count in counts.items() if count > 0}
    if not present:
        raise ValueError("no rows for any task")
    if strategy == "proportional":
        raw = {name: float(count) for name, count in present.items()}
    elif strategy == "temperature":
        raw = {name: float(count) ** (1.0 / temperature) for name, count in present.items()}
    elif strategy == "uniform":
        raw = dict.fromkeys(present, 1.0)
    else:
        raise ValueError(f"data.sampling={strategy!r} is not proportional, temperature or uniform")
    total = sum(raw.values())
    return {name: raw.get(name, 0.0) / total for name in counts}


def rows_per_task(counts: dict[str, int], weights: dict[str, float]) -> dict[str, int]:
    """Rows of each task in one epoch of the same total size as the data."""
    total = sum(counts.values())
    return {name: int(round(total * weights[name])) for name in counts}


def epoch_indices(task_ids: np.ndarray, targets: list[int], rng: np.random.Generator) -> np.ndarray:
    """Shuffled row indices giving task t `targets[t]` rows (without replacement while rows last)."""
    chosen = []
    for task_id, target in enumerate(targets):
        rows = np.flatnonzero(task_ids == task_id)
        if target == 0 or rows.size == 0:
            continue
        repeats, remainder = divmod(target, rows.size)
        chosen.extend([rows] * repeats)
        chosen.append(rng.choice(rows, size=remainder, replace=False))
    indices = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    rng.shuffle(indices)
    return indices
