"""Texts -> token ids -> padded tensors: the one tokenisation of training, validation, serving and batch jobs.

Ids are produced unpadded (so batches can be grouped by length first) and padded per batch to its longest row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase


def token_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_seq_length: int) -> list[list[int]]:
    """Unpadded ids per text ([CLS] ... [SEP]), truncated at `max_seq_length`."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_seq_length, return_token_type_ids=False)
    return encoded["input_ids"]


def pad(tokenizer: PreTrainedTokenizerBase, ids: Sequence[list[int]]) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask`, (B, T) each, padded to the longest row."""
    padded = tokenizer.pad({"input_ids": list(ids)}, return_tensors="pt")
    return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_seq_length: int) -> dict[str, torch.Tensor]:
    """Truncate at `max_seq_length`, pad to the longest text in the batch."""
    return pad(tokenizer, token_ids(tokenizer, texts, max_seq_length))


def length_sorted_chunks(
    tokenizer: PreTrainedTokenizerBase, ids: Sequence[list[int]], batch_size: int
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(row indices, padded tokens) per chunk of `batch_size` rows taken in length order, so chunks pad little."""
    order = np.argsort([len(row) for row in ids], kind="stable")
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        yield chunk, pad(tokenizer, [ids[i] for i in chunk])


def pooled_in_input_order(
    pooled_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    ids: Sequence[list[int]],
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """`pooled_fn(input_ids, attention_mask)` over length-sorted chunks, as float32 `(N, H)` rows in the order of `ids`
    (on `device`; `(0, 0)` for no ids)."""
    out = None
    for chunk, padded in length_sorted_chunks(tokenizer, ids, batch_size):
        pooled = pooled_fn(padded["input_ids"].to(device), padded["attention_mask"].to(device)).float()  # (b, H)
        if out is None:
            out = torch.empty(len(ids), pooled.shape[1], device=device)
        out[torch.as_tensor(chunk, device=device)] = pooled
    return out if out is not None else torch.empty(0, 0, device=device)
