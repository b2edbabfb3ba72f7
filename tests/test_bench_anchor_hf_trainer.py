"""jobs/bench/anchor_hf_trainer.py (the Hugging Face Trainer, the `--anchor hf-trainer` bench's other side) on a tiny
random BERT and synthetic rows, with the project's interpreter (as the bench runs it): throughput, validation
accuracy per task, and the wall-time budget that stops it."""

from __future__ import annotations

import sys
from pathlib import Path

from jobs.bench.anchors import run_script
from tests.conftest import SENTIMENT, TOPIC, synthetic_rows, write_parquet


def train(backbone: Path, tmp_path: Path, **changes) -> dict:
    """The script's result for a small request, changed by `changes`."""
    train_file = write_parquet(tmp_path / "train.parquet", synthetic_rows(256))
    validation_file = write_parquet(tmp_path / "validation.parquet", synthetic_rows(64, seed=1))
    request = {
        "backbone": str(backbone), "train": [str(train_file)], "validation": [str(validation_file)],
        "tasks": {"sentiment": SENTIMENT, "topic": TOPIC}, "loss_weights": {"sentiment": 1.0, "topic": 2.0},
        "rows_per_step": 16, "max_seq_length": 32, "learning_rate": 1e-4, "head_learning_rate": 2e-3,
        "weight_decay": 0.01, "warmup_ratio": 0.06, "max_steps": 4, "max_seconds": None, "threads": 1,
        "torch_compile": False, "group_by_length": True, "seed": 0, **changes,
    }  # fmt: skip
    return run_script("anchor_hf_trainer.py", request, python=Path(sys.executable), timeout=120)


def test_trainer_reports_throughput_and_validation_accuracy(tiny_backbone, tmp_path):
    result = train(tiny_backbone, tmp_path)
    assert result["steps"] == 4 and result["steps_measured"] == 2 and result["stopped_by"] == "max_steps"
    assert result["real_tokens_per_s"] > 0 and result["samples_per_s"] > 0 and result["step_ms"] > 0
    assert result["padded_per_real_token"] >= 1
    assert set(result["validation"]) == {"sentiment", "topic"}
    assert all(0 <= accuracy <= 1 for accuracy in result["validation"].values())
    assert result["flags"]["group_by_length"] and result["flags"]["bf16"] and result["torch_threads"] == 1


def test_max_seconds_stops_training(tiny_backbone, tmp_path):
    result = train(tiny_backbone, tmp_path, max_steps=10**6, max_seconds=1.0, group_by_length=False)
    assert result["stopped_by"] == "max_seconds" and result["steps"] < 10**6
    assert 1.0 <= result["train_wall_s"] < 30
    assert result["real_tokens_per_s"] > 0 and set(result["validation"]) == {"sentiment", "topic"}
