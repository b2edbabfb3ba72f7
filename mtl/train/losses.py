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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of each task's mean cross-entropy over its own rows.

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
        task_loss = (row_losses * mask).sum() / mask.sum().clamp(min=1)
        per_task[task_name] = task_loss.detach()
        total = total + loss_weights[task_name] * task_loss
    return total, per_task
