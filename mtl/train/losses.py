"""Masked multi-task loss over mixed-task batches: one loss per task type, each over its task's own rows.

- classification, pair_classification: cross-entropy of the head's logits (optionally label-smoothed);
- multilabel: binary cross-entropy of each label's logit, averaged over the labels (targets: the row's bit set);
- similarity, `cosine_mse`: (cos(u, v) - target)^2 with the score scaled to 0..1 by the task's score_range
  (sentence-transformers' CosineSimilarityLoss); `cosent`: the CoSENT ranking loss over the task's pairs in the batch,
  log(1 + sum over score_i > score_j of exp(scale * (cos_j - cos_i))) (Su 2022), which only asks for the right order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtl.config import TaskConfig

COSENT_SCALE = 20.0  # sentence-transformers' CoSENTLoss default


def label_bits(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Multi-hot `(B, count)` float targets of multilabel rows' bit sets `(B,)`."""
    positions = torch.arange(count, device=labels.device)
    return ((labels.unsqueeze(1) >> positions) & 1).float()


def similarity_target(scores: torch.Tensor, task: TaskConfig) -> torch.Tensor:
    """Scores scaled to 0..1 by the task's score_range (what the cosine is trained toward)."""
    low, high = task.score_range
    return ((scores.float() - low) / (high - low)).clamp(0.0, 1.0)


def cosent_loss(cosines: torch.Tensor, scores: torch.Tensor, scale: float = COSENT_SCALE) -> torch.Tensor:
    """CoSENT over the given pairs `(N,)`: 0-ish when every higher-scored pair has the higher cosine."""
    differences = scale * (cosines[None, :] - cosines[:, None])  # [i, j] = scale * (cos_j - cos_i)
    ordered = scores[:, None] > scores[None, :]  # pairs (i, j) with score_i > score_j
    terms = differences[ordered]
    zero = torch.zeros(1, device=cosines.device, dtype=terms.dtype)
    return torch.logsumexp(torch.cat([zero, terms]), dim=0)


def row_losses(
    output: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None, task: TaskConfig, mask: torch.Tensor
) -> torch.Tensor:
    """Per-row `(B,)` loss of one task's output for every row (rows of other tasks are masked out by the caller)."""
    if task.type == "similarity":
        scores = torch.zeros_like(output) if scores is None else scores
        target = similarity_target(torch.where(mask, scores, torch.zeros_like(scores)), task)
        return (output.float() - target) ** 2
    if task.type == "multilabel":
        targets = label_bits(torch.where(mask, labels, torch.zeros_like(labels)), output.shape[-1])
        return F.binary_cross_entropy_with_logits(output.float(), targets, reduction="none").mean(dim=-1)
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels))  # other tasks' ids may be out of range
    return F.cross_entropy(output.float(), safe_labels, reduction="none", label_smoothing=task.label_smoothing)


def multitask_loss(
    logits: dict[str, torch.Tensor],
    task_ids: torch.Tensor,
    labels: torch.Tensor,
    loss_weights: dict[str, float],
    label_smoothing: dict[str, float] | None = None,
    reduction: str = "task_mean",
    scores: torch.Tensor | None = None,
    tasks: dict[str, TaskConfig] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum over tasks of each task's loss over its own rows.

    `reduction` (`train.task_loss`): `task_mean` divides a task's summed row losses by its rows in the batch (each
    task weighs `loss_weight` in every batch it appears in, however few its rows); `row_mean` divides by the rows of
    the whole batch (each row weighs alike, a task in proportion to its rows). A CoSENT task's loss is one figure
    over its pairs: under `row_mean` it is scaled by the task's share of the batch.

    `logits` maps task name (in task-id order) to its output (`mtl.model.multitask.MultiTaskModel.forward`);
    `task_ids`, `labels` and `scores` are `(B,)`. `tasks`: the task configs (default: every task classification,
    with `label_smoothing`). A task with no row in the batch still enters the graph with weight zero, so every head
    gets a (zero) gradient and distributed gradient sync never meets an unused parameter.
    Returns the total and each task's mean loss (0 where the task is absent).
    """
    total = torch.zeros((), dtype=torch.float32, device=labels.device)
    per_task: dict[str, torch.Tensor] = {}
    for task_id, (task_name, output) in enumerate(logits.items()):
        smoothing = (label_smoothing or {}).get(task_name, 0.0)
        task = (tasks or {}).get(task_name) or TaskConfig(
            labels=[str(i) for i in range(max(2, output.shape[-1]))], label_smoothing=smoothing
        )
        mask = task_ids == task_id  # (B,)
        count = mask.sum()
        if task.type == "similarity" and task.similarity_loss == "cosent":
            if int(count) >= 2:
                task_loss = cosent_loss(output[mask].float(), scores[mask].float())
            else:
                task_loss = output.float().sum() * 0.0  # in the graph, no pairs to order
            summed = task_loss * count
        else:
            summed = (row_losses(output, labels, scores, task, mask) * mask).sum()
            task_loss = summed / count.clamp(min=1)
        per_task[task_name] = task_loss.detach()  # logged as the task's mean loss either way
        contribution = task_loss if reduction == "task_mean" else summed / len(task_ids)
        total = total + loss_weights[task_name] * contribution
    return total, per_task
