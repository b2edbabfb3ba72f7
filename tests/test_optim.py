import pytest

from mtl.model.multitask import build_model
from mtl.model.strategies import apply_strategy
from mtl.train.optim import build_optimizer, build_scheduler, lr_factor, parameter_groups


def groups_for(make_config, finetune, optim):
    config = make_config(finetune=finetune, optim=optim)
    model = apply_strategy(build_model(config), config.finetune)
    return model, parameter_groups(model, config.optim)


def test_layer_decay_and_head_lr(make_config):
    _, groups = groups_for(
        make_config, {"strategy": "full"}, {"head_lr": 1e-3, "backbone_lr": 1e-4, "layer_decay": 0.5}
    )
    lrs = {group["name"]: group["lr"] for group in groups}
    assert lrs["head:topic"] == lrs["head:sentiment"] == 1e-3
    assert lrs["backbone:layer1"] == pytest.approx(1e-4)  # top layer of 2
    assert lrs["backbone:layer0"] == pytest.approx(5e-5)
    assert lrs["backbone:embeddings"] == pytest.approx(2.5e-5)  # lowest


def test_no_weight_decay_on_biases_and_layernorm(make_config):
    model, groups = groups_for(make_config, {"strategy": "full"}, {"weight_decay": 0.1})
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    for group in groups:
        for parameter in group["params"]:
            is_norm_or_bias = names[id(parameter)].endswith("bias") or "LayerNorm" in names[id(parameter)]
            assert group["weight_decay"] == (0.0 if is_norm_or_bias else 0.1), names[id(parameter)]


def test_frozen_parameters_are_in_no_group(make_config):
    model, groups = groups_for(make_config, {"strategy": "head_only", "freeze_heads": ["topic"]}, {})
    grouped = {id(parameter) for group in groups for parameter in group["params"]}
    trainable = {id(parameter) for parameter in model.parameters() if parameter.requires_grad}
    assert grouped == trainable and len(grouped) == 2
    assert {group["name"] for group in groups} == {"head:sentiment", "head:sentiment/no_decay"}


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_schedule_keeps_lr_ratios(make_config, schedule):
    config = make_config(finetune={"strategy": "full"}, optim={"schedule": schedule, "warmup_ratio": 0.2})
    model = apply_strategy(build_model(config), config.finetune)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, total_steps=20)
    peaks = [group["initial_lr"] for group in optimizer.param_groups]
    seen = []
    for _ in range(20):
        optimizer.step()
        scheduler.step()
        factors = [group["lr"] / peak for group, peak in zip(optimizer.param_groups, peaks, strict=True)]
        assert max(factors) - min(factors) < 1e-12
        seen.append(factors[0])
    assert max(seen) == pytest.approx(1.0)


def test_lr_factor_shapes():
    linear = lr_factor("linear", warmup_steps=10, total_steps=110)
    assert linear(0) == 0.0 and linear(5) == 0.5 and linear(10) == 1.0 and linear(60) == 0.5 and linear(110) == 0.0
    cosine = lr_factor("cosine", warmup_steps=0, total_steps=100)
    assert cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)
    assert lr_factor("constant", 0, 100)(99) == 1.0
