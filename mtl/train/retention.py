"""Keeping the encoder's general knowledge: a retention term in the loss and the STS-B probe that measures it.

`distill`: weight x mean over the batch of (1 - cos(student pooled, teacher pooled)), the teacher being the frozen
starting encoder (backbone or `model.init_from`) with the same tokenisation and pooling. `l2sp`: weight x the squared
distance of the encoder's trainable weights from their starting values (Xuhong et al. 2018).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from mtl.data.tokenization import pooled_in_input_order, token_ids
from mtl.evaluation.stsb import read_stsb
from mtl.model.precision import autocast


def distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos) over rows of two `(B, H)` batches; 0 when the student still embeds like the teacher."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def l2sp_loss(named_parameters: Iterable[tuple[str, nn.Parameter]], start: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of squared distances of the parameters named in `start` from their starting values."""
    terms = [((parameter.float() - start[name]) ** 2).sum() for name, parameter in named_parameters if name in start]
    return torch.stack(terms).sum() if terms else torch.zeros(())


class Teacher:
    """The frozen starting encoder + pooling: pooled vectors for a batch, no gradient, never trained."""

    def __init__(self, model: nn.Module, precision: str, device: torch.device):
        self.model = model.to(device).eval().requires_grad_(False)
        self.precision, self.device_type = precision, device.type

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, self.device_type):
            return self.model.pooled(input_ids, attention_mask).float()  # (B, H)


class StsbProbe:
    """STS-B Spearman of the encoder being trained, at every validation; each rank scores its share of the pairs."""

    def __init__(self, path: str, tokenizer, max_seq_length: int, rank: int, world_size: int, batch_size: int = 128):
        """`world_size` 1 makes every rank score every pair (ZeRO-3: all ranks must run the same forwards)."""
        table = read_stsb(path, "data.stsb")
        self.scores = table.column("score").to_numpy()
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.pairs = np.array_split(np.arange(len(self.scores)), world_size)[rank]  # this rank's pair indices
        left = token_ids(tokenizer, table.column("sentence1").take(self.pairs).to_pylist(), max_seq_length)
        right = token_ids(tokenizer, table.column("sentence2").take(self.pairs).to_pylist(), max_seq_length)
        self.tokenizer, self.left, self.right = tokenizer, left, right

    @torch.no_grad()
    def spearman(self, pooled_fn, device: torch.device) -> float:
        """Spearman of cos(sentence1, sentence2) with the gold scores, over every rank's pairs (collective)."""
        cosine = (
            F.cosine_similarity(
                pooled_in_input_order(pooled_fn, self.tokenizer, self.left, self.batch_size, device),
                pooled_in_input_order(pooled_fn, self.tokenizer, self.right, self.batch_size, device),
                dim=-1,
            )
            .cpu()
            .numpy()
        )
        if self.world_size > 1:
            gathered: list = [None] * self.world_size
            dist.all_gather_object(gathered, cosine)
            cosine = np.concatenate(gathered)
        return float(spearmanr(cosine, self.scores).statistic)  # ranks' shares are in order: pairs line up


class NoRetention:
    """`retain.method: none`: no term in the loss."""

    name = "none"

    def loss(self, pooled: torch.Tensor, inputs: dict, module: nn.Module, timer) -> torch.Tensor | None:
        return None


class Distill:
    """`retain.method: distill`: `distill_loss` to the teacher's vectors, cached with the rows (`inputs["teacher"]`,
    `mtl.train.teacher_embeddings`) or computed by an online `Teacher` in every step."""

    name = "distill"

    def __init__(self, teacher: Teacher | None):
        self.teacher = teacher

    def loss(self, pooled: torch.Tensor, inputs: dict, module: nn.Module, timer) -> torch.Tensor:
        if self.teacher is None:
            return distill_loss(pooled, inputs["teacher"])
        with timer.phase("teacher"):
            target = self.teacher(inputs["input_ids"], inputs["attention_mask"])
        return distill_loss(pooled, target)


class L2SP:
    """`retain.method: l2sp`: `l2sp_loss` from the encoder's trainable weights as they were before training."""

    name = "l2sp"

    def __init__(self, model: nn.Module):
        self.start = {
            name: p.detach().float().clone()
            for name, p in model.named_parameters()
            if p.requires_grad and "heads." not in name
        }

    def loss(self, pooled: torch.Tensor, inputs: dict, module: nn.Module, timer) -> torch.Tensor:
        return l2sp_loss(module.named_parameters(), self.start)
