import copy

import pytest
import yaml

from mtl.config import ConfigError, apply_overrides, load_config, parse_override, validate_config
from tests.conftest import SENTIMENT, TOPIC

BASE = {
    "tasks": {"topic": {"labels": TOPIC}, "sentiment": {"labels": SENTIMENT}},
    "data": {"train": "train.parquet"},
}


def with_(**sections):
    raw = copy.deepcopy(BASE)
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def test_defaults_and_derived_values():
    config = validate_config(with_())
    assert config.model.backbone == "sentence-transformers/all-MiniLM-L6-v2"
    assert config.model.pooling == "auto" and config.model.trust_remote_code is False
    assert config.task_names == ["topic", "sentiment"]
    assert config.data.train == ["train.parquet"]
    assert config.finetune.lora.target_modules == ["query", "value"]


def test_round_trip_through_plain_data():
    config = validate_config(with_(finetune={"strategy": "lora"}))
    assert validate_config(config.model_dump(mode="json")) == config


def test_everything_frozen_is_rejected_naming_the_keys():
    with pytest.raises(ConfigError, match="nothing to train") as error:
        validate_config(with_(finetune={"strategy": "head_only", "freeze_heads": ["topic", "sentiment"]}))
    assert "finetune.freeze_heads" in str(error.value)


def test_unknown_frozen_head_is_rejected():
    with pytest.raises(ConfigError, match=r"finetune.freeze_heads names unknown task\(s\) \['news'\]"):
        validate_config(with_(finetune={"freeze_heads": ["news"]}))


def test_head_only_with_one_frozen_head_is_allowed():
    config = validate_config(with_(finetune={"strategy": "head_only", "freeze_heads": ["topic"]}))
    assert config.finetune.freeze_heads == ["topic"]


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"optim\.head_learning_rate: unknown key"):
        validate_config(with_(optim={"head_learning_rate": 0.1}))


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"deepspeed\.zero_stage"):
        validate_config(with_(deepspeed={"zero_stage": 4}))


def test_fp16_without_gpu_is_rejected():
    with pytest.raises(ConfigError, match=r"train\.precision=fp16 needs a GPU"):
        validate_config(with_(train={"max_steps": 5, "precision": "fp16"}))


def test_steps_or_epochs_exactly_one():
    with pytest.raises(ConfigError, match="exactly one of train.max_steps and train.epochs"):
        validate_config(with_(train={"max_steps": 5, "epochs": 1}))
    config = validate_config(with_(train={"epochs": 2, "micro_batch_size": 10, "grad_accum_steps": 2}))
    assert config.with_steps_for(101).train.max_steps == 11  # ceil(2 * 101 / 20)


def test_duplicate_labels_rejected():
    with pytest.raises(ConfigError, match=r"tasks\.topic\.labels"):
        validate_config({**BASE, "tasks": {"topic": {"labels": ["a", "a"]}}})


def test_overrides_parse_numbers_lists_and_nested_keys():
    assert parse_override("optim.head_lr=3e-4") == (["optim", "head_lr"], 3e-4)
    raw = apply_overrides(
        with_(),
        ["finetune.lora.target_modules=[query, key, value]", "finetune.strategy=lora", "train.max_steps=7"],
    )
    config = validate_config(raw)
    assert config.finetune.lora.target_modules == ["query", "key", "value"]
    assert config.train.max_steps == 7


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("optim.head_lr")


def test_load_config_applies_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(with_()))
    config = load_config(path, ["scaling.num_workers=2"])
    assert config.scaling.num_workers == 2
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
