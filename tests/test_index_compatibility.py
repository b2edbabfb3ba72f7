"""Index compatibility: recall@10 of new-encoder queries in the starting encoder's index, and the report's figure."""

import json

import numpy as np
import pytest

from mtl.evaluation.index_compatibility import (
    compatibility_line,
    index_compatibility,
    nearest,
    overlap_at_k,
    sample_texts,
)
from mtl.train.report import compatibility_check, write_report
from tests.conftest import make_tiny_export, write_parquet


def vectors(count: int = 500, dim: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)


def test_nearest_leaves_out_each_text_itself_and_orders_best_first():
    points = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    found = nearest(points, points, 2)
    assert found.tolist() == [[1, 3], [0, 3], [3, 1], [2, 1]]
    assert overlap_at_k(found, found) == 1.0
    assert overlap_at_k(np.array([[1, 2]]), np.array([[1, 3]])) == 0.5


def test_the_same_encoder_is_fully_compatible():
    old = vectors()
    result = index_compatibility(old.copy(), old)
    assert result["recall_at_10_new_query_old_index"] == 1.0 and result["recall_at_10_same_encoder"] == 1.0
    assert result["texts"] == 500 and result["advice"] == "stored vectors remain usable"


def test_a_rotated_encoder_keeps_its_neighbours_but_cannot_search_the_old_index():
    """A rotation keeps every cosine among new vectors (same_encoder 1.0) while new queries against old vectors
    retrieve noise: the case the advice exists for."""
    old = vectors()
    rotation, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(32, 32)))
    result = index_compatibility(old @ rotation.astype(np.float32), old)
    assert result["recall_at_10_same_encoder"] == pytest.approx(1.0)
    assert result["recall_at_10_new_query_old_index"] < 0.2
    assert result["advice"] == "re-embed stored vectors"
    assert "re-embed stored vectors" in compatibility_line(result)


def test_a_slightly_moved_encoder_stays_compatible_and_a_random_one_does_not():
    old = vectors()
    moved = old + 0.05 * vectors(seed=2)  # small noise: neighbourhoods and cross-cosines barely change
    assert index_compatibility(moved, old)["recall_at_10_new_query_old_index"] >= 0.9
    unrelated = index_compatibility(vectors(seed=3), old)
    assert unrelated["recall_at_10_new_query_old_index"] < 0.2 and unrelated["recall_at_10_same_encoder"] < 0.2


def test_sample_texts_takes_distinct_texts_of_both_columns_up_to_the_limit(tmp_path):
    first = write_parquet(tmp_path / "a.parquet", {"text": ["a", "b", "a", " "], "text_pair": ["c", None, "a", "d"]})
    second = write_parquet(tmp_path / "b.parquet", {"text": ["e", "f"]})  # no second-text column: passed over
    assert sample_texts([str(first), str(second)], ["text", "text_pair"], 100) == ["a", "b", "c", "d", "e", "f"]
    chosen = sample_texts([str(first), str(second)], ["text", "text_pair"], 4)
    assert len(chosen) == 4 and len(set(chosen)) == 4
    assert chosen == sample_texts([str(first), str(second)], ["text", "text_pair"], 4)  # seeded


def test_the_report_measures_an_unchanged_encoder_as_compatible(make_config, tiny_backbone, tmp_path):
    """An export whose encoder and pooling are the starting ones (the untrained tiny model) on the config's
    validation texts: both recalls 1.0; write_report puts the figure into report.json."""
    config = make_config(model={"pooling": "mean"})  # the export's pooling (another pooling is another encoder)
    export = make_tiny_export(tmp_path / "export", tiny_backbone)
    result = compatibility_check(config, export)
    assert result["recall_at_10_new_query_old_index"] == 1.0 and result["recall_at_10_same_encoder"] == 1.0
    assert result["source"] == "data.validation" and result["texts"] > 10
    report = write_report(tmp_path / "run", config, export)
    assert report["index_compatibility"] == result
    saved = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert saved["index_compatibility"]["advice"] == "stored vectors remain usable"
