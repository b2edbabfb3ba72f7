import pytest

from mtl.model.multitask import build_model
from mtl.model.strategies import apply_strategy
from mtl.train.optim import build_optimizer, build_scheduler, parameter_groups


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


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # 10 warm-up steps of 110; multiplier at steps 0, 5, 10, 60, 110.
        ("linear", [0.0, 0.5, 1.0, 0.5, 0.0]),
        ("cosine", [0.0, 0.5, 1.0, 0.5, 0.0]),
        ("constant", [0.0, 0.5, 1.0, 1.0, 1.0]),
    ],
)
def test_schedule_shapes(make_config, schedule, expected):
    config = make_config(optim={"schedule": schedule, "warmup_ratio": 10 / 110})
    optimizer = build_optimizer(build_model(config), config.optim)
    scheduler = build_scheduler(optimizer, config.optim, total_steps=110)
    peak = optimizer.param_groups[0]["initial_lr"]
    seen = {}
    for step in range(111):
        seen[step] = optimizer.param_groups[0]["lr"] / peak
        optimizer.step()
        scheduler.step()
    assert [seen[step] for step in (0, 5, 10, 60, 110)] == pytest.approx(expected, abs=1e-9)
