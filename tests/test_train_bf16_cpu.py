"""DeepSpeed bf16 with ZeRO-2 on this CPU, single process."""

import pytest

from mtl.train.local_session import train_locally

pytestmark = pytest.mark.timeout(300)


def test_bf16_zero2_on_cpu_learns(make_config):
    result = train_locally(
        make_config(
            finetune={"strategy": "full"},
            optim={"head_lr": 5e-3, "backbone_lr": 1e-3, "warmup_ratio": 0.0},
            train={"max_steps": 100, "precision": "bf16", "eval_every": 100, "checkpoint_every": 100},
            deepspeed={"zero_stage": 2},
        )
    )
    assert result["steps"] == 100
    assert result["metrics"]["sentiment"]["accuracy"] > 0.9
