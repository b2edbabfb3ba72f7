"""One encoder pass per length chunk: a batch's texts split, by token count, into up to `max_chunks` groups that each
pad to their own longest text.

A training batch keeps the rows it was drawn with (`mtl.data.length_grouping` sorts within each task, so every task
keeps its share of each batch), and tasks differ in length: on SST-2 + TREC a batch's short questions padded to its
long sentences, 1.19-1.27 padded tokens per real one. Running the batch's texts as a few chunks, each sorted by length
and padded to its own longest, pads far less while the batch, its losses and its gradients are the same; the pooled
vectors go back to the batch's order. A chunk costs a fixed amount on top of its tokens (one more pass of every
layer's kernels, forward and backward): a split is made only where it saves more padded tokens than
`chunk_cost_tokens` per extra chunk.
"""

from __future__ import annotations

import numpy as np
import torch


def plan_chunks(lengths: np.ndarray, max_chunks: int, chunk_cost_tokens: int) -> list[np.ndarray]:
    """Row indices per chunk, longest texts first, minimising padded tokens + `chunk_cost_tokens` per chunk.

    `lengths`: real tokens per row `(N,)`. With `max_chunks` <= 1, or where no split pays, one chunk of every row in
    its own order (the plain padded pass)."""
    rows = len(lengths)
    if max_chunks <= 1 or rows < 2:
        return [np.arange(rows)]
    order = np.argsort(-np.asarray(lengths), kind="stable")
    ordered = np.asarray(lengths)[order]  # descending: a chunk starting at row i pads to ordered[i]
    # best[k][i]: least cost of rows i.. in k chunks; a chunk i..j-1 costs (j - i) * ordered[i] + chunk_cost_tokens.
    best = np.full((max_chunks + 1, rows + 1), np.inf)
    cut = np.zeros((max_chunks + 1, rows + 1), dtype=np.int64)
    best[:, rows] = 0.0
    for chunks in range(1, max_chunks + 1):
        for i in range(rows - 1, -1, -1):
            ends = np.arange(i + 1, rows + 1)
            cost = (ends - i) * ordered[i] + chunk_cost_tokens + best[chunks - 1, ends]
            pick = int(np.argmin(cost))
            best[chunks, i], cut[chunks, i] = cost[pick], ends[pick]
    chunks = int(np.argmin(best[1:, 0])) + 1
    if chunks == 1:
        return [np.arange(rows)]
    out, i = [], 0
    while i < rows:
        j = int(cut[chunks, i])
        out.append(order[i:j])
        i, chunks = j, chunks - 1
    return out


def padded_tokens(lengths: np.ndarray, chunks: list[np.ndarray]) -> int:
    """Tokens the passes over `chunks` compute, padding included."""
    lengths = np.asarray(lengths)
    return int(sum(len(rows) * lengths[rows].max() for rows in chunks if len(rows)))


def chunked(
    pass_fn, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: np.ndarray, chunks: list[np.ndarray]
) -> torch.Tensor:
    """`pass_fn(ids, mask) -> (n, H)` over each chunk cut to its own longest text (`lengths`: real tokens per row),
    back in the batch's row order."""
    if len(chunks) == 1:
        return pass_fn(input_ids, attention_mask)
    parts, order = [], []
    for rows in chunks:
        index = torch.as_tensor(rows, dtype=torch.long, device=input_ids.device)
        width = int(lengths[rows].max())
        parts.append(pass_fn(input_ids[index, :width], attention_mask[index, :width]))
        order.append(index)
    pooled = torch.cat(parts)
    inverse = torch.empty_like(torch.cat(order))
    inverse[torch.cat(order)] = torch.arange(len(inverse), device=inverse.device)
    return pooled[inverse]
