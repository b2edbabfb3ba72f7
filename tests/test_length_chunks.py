"""Length chunks: a batch's texts as a few passes that each pad to their own longest, with the batch's vectors,
gradients and row order unchanged; the plan is the cheapest split under its cost model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from transformers import AutoModel

from mtl.model.length_chunks import padded_tokens, plan_chunks
from mtl.model.multitask import MultiTaskModel


def brute_force_cost(lengths, max_chunks, cost):
    ordered = sorted(lengths, reverse=True)
    best = len(ordered) * ordered[0] + cost
    for chunks in range(2, max_chunks + 1):
        for cuts in itertools.combinations(range(1, len(ordered)), chunks - 1):
            bounds = [0, *cuts, len(ordered)]
            best = min(best, sum((b - a) * ordered[a] + cost for a, b in itertools.pairwise(bounds)))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_plan_is_the_cheapest_split_and_covers_every_row_once(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 60, size=9)
    for max_chunks, cost in [(2, 0), (3, 20), (4, 60), (4, 10_000)]:
        chunks = plan_chunks(lengths, max_chunks, cost)
        assert sorted(np.concatenate(chunks).tolist()) == list(range(len(lengths)))
        assert 1 <= len(chunks) <= max_chunks
        planned = padded_tokens(lengths, chunks) + cost * len(chunks)
        assert planned == brute_force_cost(lengths.tolist(), max_chunks, cost), (lengths, max_chunks, cost, chunks)


def test_one_chunk_keeps_the_batch_order():
    lengths = np.array([5, 30, 7, 29])
    assert [c.tolist() for c in plan_chunks(lengths, 1, 0)] == [[0, 1, 2, 3]]
    assert [c.tolist() for c in plan_chunks(lengths, 4, 10_000)] == [[0, 1, 2, 3]]  # no split pays
    split = plan_chunks(lengths, 4, 0)
    assert padded_tokens(lengths, split) == lengths.sum() and padded_tokens(lengths, plan_chunks(lengths, 1, 0)) == 120


def test_chunked_pass_gives_the_batch_the_same_vectors_and_gradients(tiny_backbone):
    torch.manual_seed(0)
    encoder = AutoModel.from_pretrained(tiny_backbone)
    model = MultiTaskModel(encoder, "mean", {"topic": ("classification", 3)}).eval()  # eval: no dropout masks
    lengths = [30, 3, 4, 29, 5, 28, 2, 31, 6, 3, 17]
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(5, 100, (length,))
        mask[row, :length] = 1

    def vectors_and_grads(chunks):
        model.zero_grad()
        model.length_chunks = chunks
        pooled = model.pooled(ids, mask)
        (pooled * torch.arange(pooled.shape[1])).sum().backward()  # row- and feature-specific gradient
        grads = {name: p.grad.clone() for name, p in model.encoder.named_parameters() if p.grad is not None}
        return pooled.detach(), grads, model.last_padded_tokens

    one, one_grads, one_tokens = vectors_and_grads((1, 0))
    split, split_grads, split_tokens = vectors_and_grads((4, 8))
    assert one_tokens == len(lengths) * max(lengths) and split_tokens < one_tokens / 2
    torch.testing.assert_close(split, one, atol=1e-5, rtol=1e-4)  # same rows in the same order
    assert one_grads.keys() == split_grads.keys()
    for name, grad in one_grads.items():
        torch.testing.assert_close(split_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
