"""Mixed precision for forward passes outside DeepSpeed's engine (teacher, STS-B probe, inference)."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch

LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device_type: str):
    """`torch.autocast` in bf16/fp16 for those precisions; no-op for fp32."""
    dtype = LOW_PRECISION.get(precision)
    return torch.autocast(device_type, dtype=dtype) if dtype else contextlib.nullcontext()


def native_bf16(device_type: str) -> bool:
    """Whether this machine computes bf16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX
    (Linux: /proc/cpuinfo flags). Elsewhere bf16 is emulated and slower than fp32."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.is_file() else ""
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def resolve_precision(precision: str, device_type: str) -> str:
    """`auto` -> bf16 where the hardware has it natively (`native_bf16`), else fp32; fp32 and bf16 as given."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device_type) else "fp32"
