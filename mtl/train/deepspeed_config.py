"""The one function that writes DeepSpeed's config dict from ours: no number typed twice."""

from __future__ import annotations

from mtl.config import Config


def deepspeed_config(config: Config) -> dict:
    train, zero = config.train, config.deepspeed
    zero_optimization: dict = {"stage": zero.zero_stage}
    if zero.offload_optimizer:
        zero_optimization["offload_optimizer"] = {"device": "cpu", "pin_memory": config.scaling.use_gpu}
    if zero.zero_stage == 3:
        # Lets export gather a full 16-bit state dict on rank 0.
        zero_optimization["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "train_batch_size": config.rows_per_step,
        "gradient_clipping": config.optim.max_grad_norm,
        "zero_optimization": zero_optimization,
        "bf16": {"enabled": train.precision == "bf16" and not zero.autocast},
        "fp16": {"enabled": train.precision == "fp16" and not zero.autocast},
        "torch_autocast": {
            "enabled": zero.autocast,
            "dtype": "float16" if train.precision == "fp16" else "bfloat16",
        },
        # Our torch.optim.AdamW with parameter groups is the optimizer, also under offload.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
