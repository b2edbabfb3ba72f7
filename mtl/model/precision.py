"""Mixed precision for forward passes outside DeepSpeed's engine (teacher, STS-B probe, inference)."""

from __future__ import annotations

import contextlib

import torch

LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device_type: str):
    """`torch.autocast` in bf16/fp16 for those precisions; no-op for fp32."""
    dtype = LOW_PRECISION.get(precision)
    return torch.autocast(device_type, dtype=dtype) if dtype else contextlib.nullcontext()
