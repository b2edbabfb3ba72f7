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
