"""Teacher embeddings for `distill`: computed once with Ray Data, keyed by what determines them, reused, rebuilt."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mtl.config import validate_config
from mtl.data.length_grouping import length_grouped
from mtl.data.tokenization import tokenize
from mtl.model.backbone import load_tokenizer
from mtl.model.multitask import build_model
from mtl.train.retention import Teacher
from mtl.train.teacher_embeddings import MARKER, teacher_embeddings
from tests.conftest import config_dict, make_tiny_backbone

ROWS = 256  # config_dict's training file


@pytest.fixture(scope="module")
def ray_local():
    import os

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def distill_config(backbone: Path, tmp_path: Path, **model):
    raw = config_dict(
        backbone, tmp_path, retain={"method": "distill"}, finetune={"strategy": "full"}, scaling={"cpus_per_worker": 1}
    )
    raw["model"].update(model)
    raw["retain"]["teacher_cache"] = str(tmp_path / "cache")
    return validate_config(raw)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_cache_holds_the_teachers_vectors_is_reused_and_rebuilt_when_its_key_changes(
    ray_local, tiny_backbone, tmp_path, capsys
):
    config = distill_config(tiny_backbone, tmp_path)
    files, reused = teacher_embeddings(config.data.train, config, ROWS)
    assert not reused and "computing 256 rows" in capsys.readouterr().out
    table = pq.ParquetDataset(files).read()
    columns = {"text", "text_pair", "task_id", "label", "score", "row_id", "teacher", "teacher_pair"}
    assert table.num_rows == ROWS and set(table.column_names) == columns
    assert not np.stack(table.column("teacher_pair").to_pylist()).any()  # no pair rows: zeros
    # Each row's vector is what the online teacher gives that text (same tokenisation, pooling, precision).
    texts = table.column("text").to_pylist()[:20]
    teacher = Teacher(build_model(config), config.train.precision, torch.device("cpu"))
    tokens = tokenize(load_tokenizer(config.model), texts, config.model.max_seq_length)
    online = teacher(tokens["input_ids"], tokens["attention_mask"]).numpy()
    cached = np.stack(table.column("teacher").to_pylist()[:20])
    np.testing.assert_allclose(cached, online, atol=1e-5)

    again, reused = teacher_embeddings(config.data.train, config, ROWS)
    assert reused and again == files and "reusing" in capsys.readouterr().out

    shorter = distill_config(tiny_backbone, tmp_path, max_seq_length=8)
    other, reused = teacher_embeddings(shorter.data.train, shorter, ROWS)
    assert not reused and Path(other[0]).parent != Path(files[0]).parent

    backbone = make_tiny_backbone(tmp_path / "other-backbone", layers=1)
    changed = distill_config(backbone, tmp_path)
    other, reused = teacher_embeddings(changed.data.train, changed, ROWS)
    assert not reused and Path(other[0]).parent != Path(files[0]).parent

    (Path(files[0]).parent / MARKER).unlink()  # an interrupted build: rebuilt, never read
    rebuilt, reused = teacher_embeddings(config.data.train, config, ROWS)
    assert not reused and "incomplete" in capsys.readouterr().out
    assert pq.ParquetDataset(rebuilt).read().num_rows == ROWS


def test_length_grouping_keeps_each_cached_vector_with_its_row(tiny_backbone):
    config = validate_config(config_dict(tiny_backbone, Path("/tmp")))
    tokenizer = load_tokenizer(config.model)
    rng = np.random.default_rng(0)
    batches = []
    for start in range(0, 64, 16):
        ids = np.arange(start, start + 16)
        texts = np.array([" ".join(["word"] * int(n)) for n in rng.integers(1, 20, 16)], dtype=object)
        batches.append({"text": texts, "task_id": (ids % 2).astype(np.int32), "label": ids, "teacher": np.eye(64)[ids]})
    out = list(length_grouped(batches, tokenizer, 32, window=4, seed=0))
    for batch in out:  # the label is the row id here: its vector must be that row's one-hot
        np.testing.assert_array_equal(batch["teacher"].argmax(axis=1), batch["label"])
    assert sorted(np.concatenate([b["label"] for b in out]).tolist()) == list(range(64))
