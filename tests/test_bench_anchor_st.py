"""jobs/bench/anchor_st.py (sentence-transformers' CPU recipes, the `--anchor st` bench's other side) on a tiny
export: rates, agreement with fp32, the saved reference vectors. It runs in the anchors' environment when that is
already built, else in the project's (which has sentence-transformers too); the test never builds it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.bench.anchors import ENV_ROOT, run_script
from tests.conftest import make_tiny_export

TEXTS = [f"sentence number {index} says {'something rather long and winding ' * (index % 4)}" for index in range(40)]


def test_st_recipes_rates_and_agreement(tiny_backbone, tmp_path):
    built = sorted(ENV_ROOT.glob("anchors-*/.complete"))
    python = built[-1].parent / "bin" / "python" if built else Path(sys.executable)
    export = make_tiny_export(tmp_path / "export", tiny_backbone)
    pq.write_table(pa.table({"text": TEXTS}), tmp_path / "texts.parquet")
    request = {"export": str(export), "texts": str(tmp_path / "texts.parquet"), "batch_size": 8, "threads": 1,
               "recipes": ["fp32", "bf16_autocast"], "vectors": str(tmp_path / "fp32.npy")}  # fmt: skip
    result = run_script("anchor_st.py", request, python=python, timeout=120)
    recipes = result["recipes"]
    assert list(recipes) == ["fp32", "bf16_autocast"]
    assert all(values["texts_per_s"] > 0 and values["load_s"] > 0 for values in recipes.values())
    assert recipes["fp32"]["min_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert recipes["bf16_autocast"]["min_cosine"] >= 0.99
    assert result["texts"] == len(TEXTS)
    assert np.load(tmp_path / "fp32.npy").shape[0] == len(TEXTS)
