import pytest
import torch
import torch.nn.functional as F

from mtl.train.losses import multitask_loss


def test_weighted_sum_of_per_task_means():
    torch.manual_seed(0)
    logits = {"topic": torch.randn(4, 6), "sentiment": torch.randn(4, 2)}
    task_ids = torch.tensor([0, 1, 1, 0])
    labels = torch.tensor([5, 1, 0, 2])
    total, per_task = multitask_loss(logits, task_ids, labels, {"topic": 2.0, "sentiment": 0.5})
    topic = F.cross_entropy(logits["topic"][[0, 3]], labels[[0, 3]])
    sentiment = F.cross_entropy(logits["sentiment"][[1, 2]], labels[[1, 2]])
    assert torch.allclose(total, 2.0 * topic + 0.5 * sentiment)
    assert torch.allclose(per_task["topic"], topic)


def test_absent_task_head_gets_a_zero_gradient():
    head_topic = torch.nn.Linear(4, 6)
    head_sentiment = torch.nn.Linear(4, 2)
    pooled = torch.randn(3, 4)
    logits = {"topic": head_topic(pooled), "sentiment": head_sentiment(pooled)}
    # Only sentiment rows; sentiment labels would be out of range for nothing, topic has none.
    total, per_task = multitask_loss(
        logits, torch.tensor([1, 1, 1]), torch.tensor([0, 1, 1]), {"topic": 1, "sentiment": 1}
    )
    total.backward()
    assert head_topic.weight.grad is not None and torch.count_nonzero(head_topic.weight.grad) == 0
    assert torch.count_nonzero(head_sentiment.weight.grad) > 0
    assert per_task["topic"].item() == 0.0


def test_other_tasks_labels_out_of_range_do_not_break_a_small_head():
    logits = {"topic": torch.randn(2, 6), "sentiment": torch.randn(2, 2)}
    total, _ = multitask_loss(logits, torch.tensor([0, 1]), torch.tensor([5, 1]), {"topic": 1, "sentiment": 1})
    assert torch.isfinite(total)


def test_label_smoothing_applies_only_to_the_named_task():
    torch.manual_seed(0)
    logits = {"topic": torch.randn(4, 6), "sentiment": torch.randn(4, 2)}
    task_ids = torch.tensor([0, 1, 1, 0])
    labels = torch.tensor([5, 1, 0, 2])
    _, per_task = multitask_loss(logits, task_ids, labels, {"topic": 1, "sentiment": 1}, {"topic": 0.1})
    topic = F.cross_entropy(logits["topic"][[0, 3]], labels[[0, 3]], label_smoothing=0.1)
    sentiment = F.cross_entropy(logits["sentiment"][[1, 2]], labels[[1, 2]])
    assert torch.allclose(per_task["topic"], topic)
    assert torch.allclose(per_task["sentiment"], sentiment)


def test_one_row_of_a_task_weighs_the_task_under_task_mean_and_one_row_under_row_mean():
    torch.manual_seed(0)
    logits = {"topic": torch.randn(64, 6), "sentiment": torch.randn(64, 2)}
    task_ids = torch.tensor([0] + [1] * 63)  # one topic row among 63 sentiment rows
    labels = torch.tensor([3] + [1] * 63)
    weights = {"topic": 1.0, "sentiment": 1.0}
    rows_topic = F.cross_entropy(logits["topic"][:1], labels[:1], reduction="sum")
    rows_sentiment = F.cross_entropy(logits["sentiment"][1:], labels[1:], reduction="sum")
    task_mean, per_task = multitask_loss(logits, task_ids, labels, weights)
    row_mean, per_task_rows = multitask_loss(logits, task_ids, labels, weights, reduction="row_mean")
    assert task_mean == pytest.approx(float(rows_topic + rows_sentiment / 63), rel=1e-5)
    assert row_mean == pytest.approx(float((rows_topic + rows_sentiment) / 64), rel=1e-5)
    assert float(per_task["topic"]) == float(per_task_rows["topic"]) == pytest.approx(float(rows_topic))
