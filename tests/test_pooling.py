import torch

from mtl.model.pooling import cosine_similarity, normalize, pool, resolve_pooling
from tests.conftest import make_tiny_backbone

HIDDEN = torch.tensor(
    [
        [[1.0, -2.0], [3.0, 4.0], [100.0, 100.0]],  # last position is padding
        [[-1.0, 5.0], [-3.0, 1.0], [2.0, -7.0]],
    ]
)  # (B=2, T=3, H=2)
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])


def test_cls_takes_first_token():
    assert torch.equal(pool("cls", HIDDEN, MASK), torch.tensor([[1.0, -2.0], [-1.0, 5.0]]))


def test_mean_ignores_padding():
    expected = torch.tensor([[2.0, 1.0], [-2.0 / 3.0, -1.0 / 3.0]])
    assert torch.allclose(pool("mean", HIDDEN, MASK), expected)


def test_max_ignores_padding_even_when_padding_is_larger():
    assert torch.equal(pool("max", HIDDEN, MASK), torch.tensor([[3.0, 4.0], [2.0, 5.0]]))


def test_max_with_all_negative_real_tokens():
    hidden = torch.tensor([[[-5.0], [-1.0], [0.0]]])
    assert pool("max", hidden, torch.tensor([[1, 1, 0]])).item() == -1.0


def test_normalize_and_cosine():
    vectors = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    assert torch.allclose(normalize(vectors).norm(dim=-1), torch.ones(2))
    assert torch.allclose(cosine_similarity(vectors, vectors * 7), torch.ones(2))
    assert torch.allclose(cosine_similarity(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])), torch.zeros(1))


def test_auto_uses_declared_pooling(tmp_path):
    declared = make_tiny_backbone(tmp_path / "mean", pooling="mean")
    assert resolve_pooling("auto", declared) == "mean"
    assert resolve_pooling("max", declared) == "max"


def test_auto_falls_back_to_cls_for_plain_bert(tiny_backbone):
    assert resolve_pooling("auto", tiny_backbone) == "cls"


def test_auto_on_bundled_default_is_mean():
    from mtl.model.backbone import bundled_default_dir

    assert resolve_pooling("auto", bundled_default_dir()) == "mean"


def test_declared_pooling_errors_name_the_file(tmp_path):
    import json

    import pytest

    (tmp_path / "1_Pooling").mkdir()
    config = tmp_path / "1_Pooling" / "config.json"
    config.write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": False}))
    with pytest.raises(ValueError, match=r"1_Pooling/config.json: declares no pooling mode; set model.pooling"):
        resolve_pooling("auto", tmp_path)
    config.write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "mean_sqrt_len_tokens"}))
    with pytest.raises(ValueError, match=r"1_Pooling/config.json: declares pooling 'mean_sqrt_len_tokens'"):
        resolve_pooling("auto", tmp_path)
    config.write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "max"}))  # what exports now write
    assert resolve_pooling("auto", tmp_path) == "max"
