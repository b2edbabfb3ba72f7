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


def test_bf16_export_holds_the_fp32_masters_and_untouched_frozen_weights(make_config, tiny_backbone):
    """DeepSpeed bf16 keeps 16-bit module weights; the export must carry the optimizer's fp32 masters for what
    trained (values a bf16 copy cannot hold) and the exact starting fp32 values for what stayed frozen."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    result = train_locally(
        make_config(
            finetune={"strategy": "partial", "unfreeze_last_n_layers": 1},
            optim={"head_lr": 5e-3, "backbone_lr": 1e-3, "warmup_ratio": 0.0},
            train={"max_steps": 6, "precision": "bf16", "eval_every": 6, "checkpoint_every": 6},
            deepspeed={"zero_stage": 2},
        )
    )
    exported = load_file(f"{result['run_dir']}/export/model.safetensors")
    starting = AutoModel.from_pretrained(tiny_backbone).state_dict()
    trained = [name for name in exported if name.startswith("encoder.layer.1.") and name.endswith("weight")]
    frozen = [name for name in exported if name.startswith(("encoder.layer.0.", "embeddings.")) and name in starting]
    assert trained and frozen
    for name in frozen:
        assert torch.equal(exported[name], starting[name]), name
    moved = [name for name in trained if not torch.equal(exported[name], starting[name])]
    assert moved, "the trained layer did not change"
    for name in moved:
        weight = exported[name]
        assert not torch.equal(weight, weight.to(torch.bfloat16).float()), f"{name}: bf16-rounded, not the fp32 master"
