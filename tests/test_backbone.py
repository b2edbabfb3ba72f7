import socket

import pytest
import torch

from mtl.config import ModelConfig
from mtl.data.tokenization import tokenize
from mtl.model.backbone import BackboneError, bundled_default_dir, load_encoder, load_tokenizer, resolve_backbone
from mtl.model.multitask import build_model
from mtl.model.pooling import cosine_similarity


def test_default_backbone_is_the_bundled_package():
    directory = resolve_backbone("sentence-transformers/all-MiniLM-L6-v2")
    assert directory == bundled_default_dir() and (directory / "model.safetensors").is_file()


def test_default_backbone_loads_with_the_network_unplugged(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    config = ModelConfig()
    encoder = load_encoder(config)
    tokenizer = load_tokenizer(config)
    assert encoder.config.hidden_size == 384
    tokens = tokenize(tokenizer, ["a cat sits on the mat", "a kitten rests on a rug", "stock markets fell"], 32)
    from mtl.model.pooling import mean_pool

    with torch.no_grad():
        hidden = encoder(**tokens).last_hidden_state
    embeddings = mean_pool(hidden, tokens["attention_mask"])
    similar = cosine_similarity(embeddings[:1], embeddings[1:2])
    unrelated = cosine_similarity(embeddings[:1], embeddings[2:3])
    assert similar > unrelated + 0.3  # a real pretrained model, not random weights


def test_unknown_hub_id_fails_offline_naming_the_key():
    with pytest.raises(BackboneError, match=r"model.backbone='nobody/no-such-model': .*never downloads"):
        resolve_backbone("nobody/no-such-model")


def test_missing_local_directory(tmp_path):
    with pytest.raises(BackboneError, match="not a model directory"):
        resolve_backbone(str(tmp_path / "missing"))


def test_model_heads_see_unnormalised_vector_and_embed_is_normalised(make_config):
    model = build_model(make_config()).eval()
    tokens = {
        "input_ids": torch.tensor([[101, 2000, 102, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0]]),
    }
    with torch.no_grad():
        pooled = model.pooled(**tokens)
        logits = model(**tokens)
        embedding = model.embed(**tokens)
    assert torch.allclose(logits["topic"], model.heads["topic"](pooled))
    assert logits["topic"].shape == (1, 6) and logits["sentiment"].shape == (1, 2)
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(1))
    assert not torch.allclose(pooled.norm(dim=-1), torch.ones(1))
