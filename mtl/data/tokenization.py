"""A batch of texts -> `input_ids`, `attention_mask`; shared by training, serving and batch jobs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_seq_length: int) -> dict[str, torch.Tensor]:
    """Truncate at `max_seq_length`, pad to the longest text in the batch."""
    encoded = tokenizer(
        list(texts),
        padding="longest",
        truncation=True,
        max_length=max_seq_length,
        return_tensors="pt",
        return_token_type_ids=False,
    )
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}  # (B, T) each
