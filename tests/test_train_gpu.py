"""The same single-process recipe on a GPU with DeepSpeed bf16 (skipped without CUDA)."""

import pytest
import torch

from mtl.train.local_session import train_locally

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_bf16_deepspeed_on_gpu(make_config, zero_stage):
    result = train_locally(
        make_config(
            finetune={"strategy": "full"},
            optim={"head_lr": 5e-3, "backbone_lr": 1e-3, "warmup_ratio": 0.0},
            train={"max_steps": 100, "precision": "bf16", "eval_every": 100, "checkpoint_every": 100},
            deepspeed={"zero_stage": zero_stage},
            scaling={"use_gpu": True},
            run={"name": f"gpu-zero{zero_stage}"},
        )
    )
    assert result["steps"] == 100
    assert result["metrics"]["sentiment"]["accuracy"] > 0.9
