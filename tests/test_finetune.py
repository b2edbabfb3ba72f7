import pytest

from mtl.model.multitask import build_model
from mtl.model.strategies import apply_strategy, parameter_report


def trainable(model):
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def build(make_config, **finetune):
    config = make_config(finetune=finetune)
    return apply_strategy(build_model(config), config.finetune)


def test_head_only_trains_heads_only(make_config):
    names = trainable(build(make_config, strategy="head_only"))
    assert names == {f"heads.{task}.{p}" for task in ("sentiment", "topic") for p in ("weight", "bias")}


def test_backbone_and_head_a_frozen_trains_only_head_b(make_config):
    names = trainable(build(make_config, strategy="head_only", freeze_heads=["topic"]))
    assert names == {"heads.sentiment.weight", "heads.sentiment.bias"}


def test_full_trains_everything_but_the_unused_pooler(make_config):
    model = build(make_config, strategy="full")
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    assert frozen == {"encoder.pooler.dense.weight", "encoder.pooler.dense.bias"}


def test_partial_trains_last_layers_only(make_config):
    names = trainable(build(make_config, strategy="partial", unfreeze_last_n_layers=1))
    backbone = {name for name in names if name.startswith("encoder.")}
    assert backbone and all(name.startswith("encoder.encoder.layer.1.") for name in backbone)
    assert "heads.topic.weight" in names


def test_partial_more_layers_than_the_model_is_rejected(make_config):
    with pytest.raises(ValueError, match="finetune.unfreeze_last_n_layers=5 but the backbone has 2 layers"):
        build(make_config, strategy="partial", unfreeze_last_n_layers=5)


def test_lora_adds_adapters_on_query_and_value(make_config):
    model = build(make_config, strategy="lora")
    backbone = {name for name in trainable(model) if name.startswith("encoder.")}
    assert backbone and all("lora_A" in name or "lora_B" in name for name in backbone)
    assert {name.split(".")[-4] for name in backbone} == {"query", "value"}
    report = parameter_report(model)
    assert report["lora"]["trainable"] == report["lora"]["total"] > 0
    assert report["backbone"]["trainable"] == 0


def test_lora_unknown_target_module_names_the_key(make_config):
    with pytest.raises(ValueError, match=r"finetune.lora.target_modules=\['qkv_proj'\]"):
        build(make_config, strategy="lora", lora={"target_modules": ["qkv_proj"]})


def test_frozen_head_with_trained_backbone(make_config):
    names = trainable(build(make_config, strategy="full", freeze_heads=["sentiment"]))
    assert "heads.sentiment.weight" not in names and "heads.topic.weight" in names
    assert any(name.startswith("encoder.") for name in names)


def test_freeze_embeddings_keeps_the_tables_and_trains_the_layers(make_config):
    config = make_config(finetune={"strategy": "full", "freeze_embeddings": True})
    model = apply_strategy(build_model(config), config.finetune)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert not any("embeddings." in name for name in trainable)
    assert any("encoder.layer.0." in name for name in trainable) and "heads.topic.weight" in trainable
