"""The retention term and the STS-B budget: values a bug would change, on a tiny random model."""

import json
from pathlib import Path

import pytest
import torch

from mtl.data.tokenization import tokenize
from mtl.model.backbone import load_tokenizer
from mtl.model.multitask import build_model
from mtl.model.strategies import apply_strategy
from mtl.train.local_session import train_locally
from mtl.train.retention import Teacher, distill_loss, l2sp_loss
from tests.conftest import SENTIMENT, TOPIC, write_parquet

pytestmark = pytest.mark.timeout(300)
TEXTS = ["the film was great", "who wrote hamlet ?", "a dull , lifeless mess of a film"]


def test_distill_is_zero_for_the_starting_encoder_and_positive_after_a_step(make_config):
    config = make_config(finetune={"strategy": "full"})
    student = apply_strategy(build_model(config), config.finetune)
    teacher = Teacher(build_model(config), "fp32", torch.device("cpu"))
    tokens = tokenize(load_tokenizer(config.model), TEXTS, 32)
    target = teacher(**tokens)
    assert distill_loss(student.pooled(**tokens), target).item() == pytest.approx(0.0, abs=1e-6)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    logits = student(**tokens)
    torch.nn.functional.cross_entropy(logits["topic"], torch.tensor([1, 3, 5])).backward()
    optimizer.step()
    moved = distill_loss(student.pooled(**tokens), target).item()
    assert moved > 1e-4
    assert not any(p.requires_grad for p in teacher.model.parameters())  # the teacher never trains


def test_l2sp_is_the_squared_distance_from_the_start():
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    start = {"w": torch.tensor([0.0, 0.0]), "absent": torch.tensor([9.0])}
    assert l2sp_loss([("w", weight), ("other", weight)], start).item() == pytest.approx(5.0)


def self_scored_stsb(path: Path, config) -> Path:
    """STS-B pairs scored by the starting encoder itself: Spearman starts at 1, so any forgetting is a drop."""
    left = ["a cat sits", "stocks fell", "who wrote it", "rain today", "a dog runs", "the sky", "he sings", "we ate"]
    right = ["a cat sat", "markets dropped", "the author", "sunny skies", "a car", "blue water", "she wrote", "rocks"]
    model, tokenizer = build_model(config).eval(), load_tokenizer(config.model)
    with torch.no_grad():
        a, b = model.embed(**tokenize(tokenizer, left, 32)), model.embed(**tokenize(tokenizer, right, 32))
    return write_parquet(path, {"sentence1": left, "sentence2": right, "score": (a * b).sum(dim=1).tolist()})


def test_runs_log_retention_and_best_respects_the_stsb_budget(make_config, tmp_path):
    stsb = self_scored_stsb(tmp_path / "stsb.parquet", make_config())
    sections = {
        "data": {"stsb": str(stsb)},
        "finetune": {"strategy": "full"},
        "optim": {"head_lr": 5e-3, "backbone_lr": 3e-3, "warmup_ratio": 0.0},
        "train": {"max_steps": 30, "eval_every": 5, "checkpoint_every": 30, "log_every": 5},
    }
    # Below the smallest Spearman step of 8 pairs but one swap (6*2/504 = 0.024 < 0.03 < 0.048): how far a full
    # fine-tune of the random tiny encoder moves the pairs differs between CPUs (CI saw -0.048 at every validation,
    # this machine -0.48 to -0.95); with this budget both runs cross it.
    budget = 0.03
    targets = {"sentiment": {"labels": SENTIMENT, "target_accuracy": 0.6}, "topic": {"labels": TOPIC}}
    result = train_locally(
        make_config(**sections, tasks=targets, retain={"method": "distill", "weight": 0.5, "max_stsb_drop": budget})
    )
    history = [json.loads(line) for line in (Path(result["run_dir"]) / "history.jsonl").read_text().splitlines()]
    train_losses = [record["loss"]["retain"] for record in history if record["kind"] == "train"]
    assert len(train_losses) == 6 and all(value > 0 for value in train_losses)
    validations = [record for record in history if record["kind"] == "validation"]
    assert all(record["stsb"]["before"] == validations[0]["stsb"]["before"] for record in validations)
    over = {record["step"] for record in validations if record["stsb"]["drop"] > budget}
    assert validations[0]["stsb"]["before"] == pytest.approx(1.0) and over, [r["stsb"] for r in validations]
    retention = result["retention"]
    assert retention["max_stsb_drop"] == budget and retention["stsb_before"] == validations[0]["stsb"]["before"]
    if result.get("best_dir"):
        best_step = json.loads((Path(result["best_dir"]) / "mtl.json").read_text())["provenance"]["steps"]
        assert best_step not in over, (best_step, over)
        assert retention["best_within_budget"] is True
    assert retention["final_within_budget"] == (validations[-1]["stsb"]["drop"] <= budget)
    checks = result["report"]["targets"]  # the run summary says whether each configured target is met
    accuracy = result["metrics"]["sentiment"]["accuracy"]
    assert checks["sentiment"] == {"target": 0.6, "accuracy": accuracy, "met": accuracy >= 0.6}
    assert "topic" not in checks and checks["stsb"]["met"] == retention["final_within_budget"]
    assert checks["all_met"] == (checks["sentiment"]["met"] and checks["stsb"]["met"])


def test_method_none_and_a_zero_weight_train_the_same_weights(make_config, tmp_path):
    sections = {"finetune": {"strategy": "full"}, "train": {"max_steps": 4, "eval_every": 4, "checkpoint_every": 4}}
    plain = train_locally(make_config(**sections, run={"name": "plain"}))
    zero = train_locally(make_config(**sections, retain={"method": "distill", "weight": 0.0}, run={"name": "zero"}))
    pulled = train_locally(make_config(**sections, retain={"method": "distill", "weight": 50.0}, run={"name": "pull"}))
    from safetensors.torch import load_file

    weights = {run: load_file(f"{result['export_dir']}/model.safetensors") for run, result in
               [("plain", plain), ("zero", zero), ("pulled", pulled)]}  # fmt: skip
    assert all(torch.equal(weights["plain"][key], weights["zero"][key]) for key in weights["plain"])
    assert any(not torch.equal(weights["plain"][key], weights["pulled"][key]) for key in weights["plain"])


def test_wise_blend_is_a_weight_space_interpolation(make_config, tiny_backbone, tmp_path):
    from safetensors.torch import load_file

    from mtl.train.wise_ft import blend_export

    first = train_locally(make_config(finetune={"strategy": "full"}, optim={"backbone_lr": 1e-2}))
    tuned = Path(first["export_dir"])
    half = load_file(str(blend_export(tuned, tiny_backbone, 0.5, tmp_path / "half") / "model.safetensors"))
    tuned_weights = load_file(str(tuned / "model.safetensors"))
    start_weights = load_file(str(blend_export(tuned, tiny_backbone, 0.0, tmp_path / "start") / "model.safetensors"))
    name = next(key for key in tuned_weights if key.endswith("layer.0.attention.self.query.weight"))
    assert not torch.allclose(tuned_weights[name], start_weights[name])
    torch.testing.assert_close(half[name], (tuned_weights[name] + start_weights[name]) / 2)
    assert (tmp_path / "half" / "heads" / "topic.safetensors").is_file()  # heads travel with the blend


def test_wise_alphas_pick_the_best_blend_within_the_budget(make_config, tmp_path):
    stsb = self_scored_stsb(tmp_path / "stsb.parquet", make_config())
    budget = 0.02
    config = make_config(
        data={"stsb": str(stsb)},
        finetune={"strategy": "full"},
        optim={"head_lr": 5e-3, "backbone_lr": 3e-3, "warmup_ratio": 0.0},
        train={"max_steps": 20, "eval_every": 20, "checkpoint_every": 20},
        retain={"wise_alphas": [0.0, 0.5], "max_stsb_drop": budget},
    )
    result = train_locally(config)
    wise = json.loads((Path(result["export_dir"]) / "mtl.json").read_text())["wise_ft"]
    assert [row["alpha"] for row in wise["table"]] == [1.0, 0.5, 0.0]
    assert wise["table"][-1]["drop"] == pytest.approx(0.0, abs=1e-6)  # alpha 0 is the starting encoder
    within = [row for row in wise["table"] if row["drop"] <= budget]
    assert wise["alpha"] == max(within, key=lambda row: row["score"])["alpha"]
    assert (Path(result["run_dir"]) / "export_tuned" / "mtl.json").is_file()
