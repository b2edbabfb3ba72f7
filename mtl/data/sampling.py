"""Task sampling: how much of each task one epoch of mixed-task training sees."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtl.config import DataConfig


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


def row_weights(texts: pa.Array | pa.ChunkedArray, data: DataConfig) -> np.ndarray:
    """Each row's draw weight within its task: `data.long_text_factor` for rows of at least `data.long_text_words`
    words (whitespace-separated), else 1."""
    if data.long_text_words is None:
        return np.ones(len(texts))
    words = pc.list_value_length(pc.utf8_split_whitespace(pc.utf8_trim_whitespace(texts)))
    return np.where(words.to_numpy(zero_copy_only=False) >= data.long_text_words, data.long_text_factor, 1.0)


def draw_rates(counts: dict[str, int], weight_sums: dict[str, float], data: DataConfig) -> tuple[dict[str, float], int]:
    """Expected draws per unit of row weight for each task, and the rows of one epoch.

    Task t gets `rows_per_task` draws in an epoch, spread over its rows in proportion to `row_weights`
    (`weight_sums[t]` is the sum of its rows' weights), so a row's expected draws are rate[t] x its weight.
    """
    targets = rows_per_task(counts, task_weights(counts, data.sampling, data.temperature))
    rates = {name: targets[name] / weight_sums[name] if weight_sums.get(name) else 0.0 for name in counts}
    return rates, sum(targets.values())


def draw_counts(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """How often each row is drawn: its whole expected draws plus one more with probability of the fraction
    (unbiased; a row expected at least once is never left out)."""
    whole = np.floor(expected)
    return (whole + (rng.random(len(expected)) < expected - whole)).astype(np.int64)


# Copy k of a row drawn more than once in an epoch gets id `row_id + k * DRAW_STRIDE` (mod 2**64): every draw has its
# own id, so a resumed epoch can leave out exactly the copies already trained (`mtl.data.stream_position`).
DRAW_STRIDE = np.uint64(0x9E3779B97F4A7C15)


def draw_ids(row_ids: np.ndarray, copies: np.ndarray) -> np.ndarray:
    """The ids of `np.repeat(rows, copies)`: a row's first copy keeps its id, later copies get their own."""
    repeated = np.repeat(np.asarray(row_ids, dtype=np.uint64), copies)
    starts = np.repeat(np.cumsum(copies) - copies, copies)
    copy_index = (np.arange(len(repeated)) - starts).astype(np.uint64)
    return repeated + copy_index * DRAW_STRIDE  # uint64 arrays wrap around silently
