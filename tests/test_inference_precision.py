"""bf16 inference keeps the encoder's weights in bf16 (no per-call casts) with vectors close to fp32's; `auto` picks
bf16 only where the hardware has it natively; `encode_counted` tells the encoder's token counts, over-window texts
included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtl.inference.exported_model import ExportedModel
from mtl.model import precision as precision_module
from mtl.model.precision import resolve_precision

TEXTS = ["the film was great", "who wrote it ?", "a long and winding review of a film " * 8, "ok"]


def test_bf16_keeps_weights_in_bf16_and_vectors_close_to_fp32(tiny_export):
    fp32 = ExportedModel.load(tiny_export)
    bf16 = ExportedModel.load(tiny_export, precision="bf16")
    assert {p.dtype for p in bf16.encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fp32.encoder.parameters()} == {torch.float32}
    ours, reference = bf16.embed(TEXTS), fp32.embed(TEXTS)
    assert ours.dtype == np.float32
    assert (ours * reference).sum(axis=1).min() >= 0.99


def test_encode_counted_gives_the_encoders_token_counts(tiny_export):
    model = ExportedModel.load(tiny_export)
    vectors, counts = model.encode_counted(TEXTS)
    np.testing.assert_array_equal(vectors.numpy(), model.encode(TEXTS).numpy())
    whole = [len(ids) for ids in model.tokenizer(TEXTS)["input_ids"]]
    window = model.max_seq_length
    assert whole[2] > window  # the long text runs past the window ...
    assert counts.tolist() == [min(length, window + 1) for length in whole]  # ... and counts window + 1
    exact = model.tokenizer(["x " * (window - 2)])["input_ids"][0]
    assert len(exact) == window and model.encode_counted(["x " * (window - 2)])[1].tolist() == [window]  # fills it


@pytest.mark.parametrize("flags, expected", [("fpu sse avx512_bf16 amx_tile", "bf16"), ("fpu sse avx2", "fp32")])
def test_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch, tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor : 0\nflags : {flags}\n")
    monkeypatch.setattr(precision_module, "Path", lambda _: cpuinfo)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
