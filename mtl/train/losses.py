"""Masked multi-task loss over mixed-task batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def multitask_loss(
    logits: dict[str, torch.Tensor],
    task_ids: torch.Tensor,
    labels: torch.Tensor,
    loss_weights: dict[str, float],
    label_smoothing: dict[str, float] | None = None,
    reduction: str = "task_mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum over tasks of each task's cross-entropy over its own rows.

    `reduction` (`train.task_loss`): `task_mean` divides a task's summed row losses by its rows in the batch (each
    task weighs `loss_weight` in every batch it appears in, however few its rows); `row_mean` divides by the rows of
    the whole batch (each row weighs alike, a task in proportion to its rows).

    `logits` maps task name (in task-id order) to `(B, n_labels)`; `task_ids` and `labels` are `(B,)`.
    A task with no row in the batch still enters the graph with weight zero, so every head gets a
    (zero) gradient and distributed gradient sync never meets an unused parameter.
    `label_smoothing` (task name -> epsilon, default 0) softens that task's targets.
    Returns the total and each task's mean loss (0 where the task is absent).
    """
    total = torch.zeros((), dtype=torch.float32, device=labels.device)
    per_task: dict[str, torch.Tensor] = {}
    for task_id, (task_name, task_logits) in enumerate(logits.items()):
        mask = task_ids == task_id  # (B,)
        safe_labels = torch.where(mask, labels, torch.zeros_like(labels))  # other tasks' ids may be out of range
        smoothing = (label_smoothing or {}).get(task_name, 0.0)
        row_losses = F.cross_entropy(
            task_logits.float(), safe_labels, reduction="none", label_smoothing=smoothing
        )  # (B,)
        summed = (row_losses * mask).sum()
        task_loss = summed / mask.sum().clamp(min=1)
        per_task[task_name] = task_loss.detach()  # logged as the task's mean loss either way
        contribution = task_loss if reduction == "task_mean" else summed / len(task_ids)
        total = total + loss_weights[task_name] * contribution
    return total, per_task
