"""Metrics and progress reporting: values a bug would change, computed by hand."""

import numpy as np
import pytest

from mtl.evaluation.metrics import classification_metrics
from mtl.model.multitask import build_model
from mtl.model.strategies import apply_strategy
from mtl.train.optim import build_optimizer
from mtl.train.progress import progress_line, shown_learning_rates


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 2])
    predictions = np.array([0, 1, 1, 1])
    metrics = classification_metrics(labels, predictions, num_classes=4)
    assert metrics["accuracy"] == 0.5 and metrics["count"] == 4
    # F1: class 0 = 2/3 (P 1, R 1/2), class 1 = 1/2 (P 1/3, R 1), class 2 = 0; class 3 never occurs: not averaged.
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert metrics["confusion"] == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]


def test_no_rows_is_zero_not_an_error():
    metrics = classification_metrics(np.array([], dtype=int), np.array([], dtype=int), num_classes=2)
    assert metrics == {"accuracy": 0.0, "macro_f1": 0.0, "count": 0, "confusion": [[0, 0], [0, 0]]}


def test_progress_shows_head_and_backbone_top_and_bottom_lr(make_config):
    config = make_config(
        finetune={"strategy": "full"}, optim={"head_lr": 1e-3, "backbone_lr": 1e-4, "layer_decay": 0.5}
    )
    optimizer = build_optimizer(apply_strategy(build_model(config), config.finetune), config.optim)
    shown = shown_learning_rates(optimizer.param_groups)
    # Tiny model: 2 layers, so the embeddings (lowest) get backbone_lr x 0.5^2.
    assert shown == pytest.approx(
        {"head:sentiment": 1e-3, "head:topic": 1e-3, "backbone_top": 1e-4, "backbone_bottom": 1e-4 * 0.25}
    )
    line = progress_line(10, 100, {"sentiment": 0.5, "topic": 1.25}, optimizer.param_groups, 320, started=0.0)
    assert line.startswith("step 10/100 loss/sentiment=0.5000 loss/topic=1.2500 lr/head:sentiment=1.00e-03")
    assert line.count("lr/") == 4


def test_phase_timer_charges_nested_time_to_the_inner_phase_only():
    from mtl.train.progress import PhaseTimer

    clock = iter([0.0, 1.0, 3.0, 6.0, 10.0])  # enter outer, enter inner, leave inner, leave outer, ...
    timer = PhaseTimer(sync=None)
    timer._now = lambda: next(clock)  # a fake clock: the arithmetic, not the machine, is under test
    with timer.phase("backward"):
        with timer.phase("grad_sync"):
            pass
    assert timer.take() == {"backward": 1.0 + 3.0, "grad_sync": 2.0}
    assert timer.take() == {}
