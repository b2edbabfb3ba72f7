"""`jobs.compare_backbones`: one recipe trained from each backbone, one table and one picture; a backbone that
cannot be used is refused before anything trains."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from mtl.config import validate_config
from mtl.errors import UserError
from mtl.train.backbone_comparison import compare_backbones, plan_comparison, task_scores, unique_labels, write_tables
from mtl.train.local_session import train_locally
from tests.conftest import config_dict, make_tiny_backbone, write_stsb

ENV = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def deep_backbone(tmp_path_factory):
    """Four layers where `tiny_backbone` has two: a bigger encoder of the same family."""
    return make_tiny_backbone(tmp_path_factory.mktemp("deep-bert"), layers=4)


def base_config(backbone, tmp_path, **sections):
    raw = config_dict(backbone, tmp_path, **sections)
    raw["data"]["stsb"] = str(write_stsb(tmp_path / "stsb.parquet"))
    raw["finetune"] = {"strategy": "full"}
    raw["train"].update(max_steps=4, eval_every=2, checkpoint_every=2)
    return raw


def never_train(config):
    raise AssertionError(f"trained {config.run.name} although a backbone was refused")


def test_trials_replace_the_backbone_only(tiny_backbone, deep_backbone, tmp_path):
    base = validate_config(base_config(tiny_backbone, tmp_path))
    trials = plan_comparison(base, [str(tiny_backbone), str(deep_backbone)], steps=3)
    assert [trial.config.model.backbone for trial in trials] == [str(tiny_backbone), str(deep_backbone)]
    assert [trial.config.run.name for trial in trials] == [
        f"test-backbone-{tiny_backbone.name}", f"test-backbone-{deep_backbone.name}",
    ]  # fmt: skip
    for trial in trials:
        assert trial.config.train.max_steps == 3 and trial.config.train.eval_every == 2
        assert trial.config.data == base.data and trial.config.finetune == base.finetune
        assert trial.config.optim == base.optim and trial.config.tasks == base.tasks
    assert trials[0].parameters["total"] < trials[1].parameters["total"]
    assert unique_labels(["a/model", "b/model", "org/model"]) == ["model", "model-2", "model-3"]


def test_unusable_backbones_are_refused_before_training(tiny_backbone, tmp_path):
    base = validate_config(base_config(tiny_backbone, tmp_path))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_backbone / "config.json").read_text())
    for tokenizer_file in tiny_backbone.glob("*token*"):
        (no_weights / tokenizer_file.name).write_bytes(tokenizer_file.read_bytes())
    cases = {
        "nobody/no-such-encoder": "not in the Hugging Face cache",
        str(tmp_path / "missing"): "not a model directory",
        str(no_weights): "cannot load the encoder's weights",
    }
    for backbone, reason in cases.items():
        with pytest.raises(UserError, match="--backbones") as caught:
            compare_backbones(base, [str(tiny_backbone), backbone], None, tmp_path / "out", train=never_train)
        assert repr(backbone) in str(caught.value) and reason in str(caught.value), str(caught.value)
    with pytest.raises(UserError, match="more than once"):
        plan_comparison(base, [str(tiny_backbone), str(tiny_backbone)], None)
    mpnet_lora = {"strategy": "lora", "lora": {"target_modules": ["q", "v"]}}  # MPNet's names, not a BERT's
    lora = validate_config({**base_config(tiny_backbone, tmp_path), "finetune": mpnet_lora})
    with pytest.raises(UserError, match="target_modules"):
        plan_comparison(lora, [str(tiny_backbone)], None)
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_table_shows_each_task_type_by_its_own_figures(tiny_backbone, tmp_path):
    raw = config_dict(tiny_backbone, tmp_path)
    raw["tasks"]["pairs"] = {"type": "similarity", "score_range": [0, 5]}
    raw["finetune"] = {"strategy": "full"}
    base = validate_config(raw)
    metrics = {
        "sentiment": {"accuracy": 0.9, "macro_f1": 0.8, "loss": 0.3},
        "topic": {"accuracy": 0.7, "macro_f1": 0.6},
        "pairs": {"spearman": 0.5, "pearson": 0.4},
    }
    tasks = task_scores(base, metrics)
    assert tasks["pairs"] == {"type": "similarity", "spearman": 0.5}
    assert tasks["sentiment"] == {"type": "classification", "accuracy": 0.9, "macro_f1": 0.8}
    row = {
        "label": "small", "tasks": tasks, "stsb_before": None, "stsb_after": None, "samples_per_s": None,
        "parameters": {"trainable": 10, "total": 1234567}, "export_mb": 91.2, "wall_s": 75.0,
        "latency": {"p50_ms": 4.0, "p95_ms": 6.5, "calls": 200, "words": 9},
    }  # fmt: skip
    write_tables([row], base, tmp_path / "out")
    header, _, line = (tmp_path / "out" / "backbones.md").read_text().splitlines()
    assert "| sentiment acc / F1 | topic acc / F1 | pairs Spearman |" in header
    assert line == (
        "| small | 0.900 / 0.800 | 0.700 / 0.600 | 0.500 | (no data.stsb) | 1,234,567 | 91 MB | - | 4.0 / 6.5 ms "
        "| 1.2 min |"
    )
    assert (tmp_path / "out" / "backbones.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(300)
def test_comparison_writes_one_row_per_backbone(tiny_backbone, deep_backbone, tmp_path):
    """In this process (`train_locally`, no Ray): the table, JSON and picture, with sane values."""
    base = validate_config(base_config(tiny_backbone, tmp_path))
    output = tmp_path / "compare"
    rows = compare_backbones(
        base, [str(tiny_backbone), str(deep_backbone)], None, output, train=train_locally, latency_calls=20
    )
    assert rows == json.loads((output / "backbones.json").read_text())
    assert [row["label"] for row in rows] == [tiny_backbone.name, deep_backbone.name]
    shallow, deep = rows
    for row in rows:
        assert row["steps"] == 4 and set(row["tasks"]) == {"sentiment", "topic"}
        for task in row["tasks"].values():
            assert task["type"] == "classification" and 0 <= task["accuracy"] <= 1 and 0 <= task["macro_f1"] <= 1
        assert -1 <= row["stsb_before"] <= 1 and -1 <= row["stsb_after"] <= 1
        assert row["samples_per_s"] > 0 and row["wall_s"] > 0
        assert 0 < row["latency"]["p50_ms"] <= row["latency"]["p95_ms"] and row["latency"]["calls"] == 20
        assert row["latency"]["words"] >= 5  # a typical validation text, not an empty string
        assert 0 < row["parameters"]["trainable"] <= row["parameters"]["total"]
    assert shallow["parameters"]["total"] < deep["parameters"]["total"]
    assert 0 < shallow["export_mb"] < deep["export_mb"]
    table = (output / "backbones.md").read_text().splitlines()
    assert len(table) == 2 + len(rows) and table[2].startswith(f"| {tiny_backbone.name} |")
    assert "sentiment acc / F1" in table[0] and "encoder p50 / p95 (one text, in-process)" in table[0]
    assert " -> " in table[2] and table[3].startswith(f"| {deep_backbone.name} |")
    assert (output / "backbones.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def make_tiny_mpnet(directory):
    """A 2-layer random MPNet (all-mpnet-base-v2's family: attention modules q/k/v/o, a relative attention bias)
    with the bundled BERT tokenizer (same vocabulary size, so its pad id 0) and declared mean pooling."""
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    from mtl.model.backbone import bundled_default_dir

    tokenizer = AutoTokenizer.from_pretrained(bundled_default_dir(), local_files_only=True)
    config = MPNetConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    MPNetModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    )
    return directory


@pytest.mark.timeout(300)
def test_an_mpnet_backbone_is_compared_beside_a_bert(tiny_backbone, tmp_path):
    """The larger backbone's family (docs/backbones.md) goes through the same recipe: partial fine-tuning finds its
    layers, the export loads, the encoder is timed."""
    mpnet = make_tiny_mpnet(tmp_path / "tiny-mpnet")
    raw = base_config(tiny_backbone, tmp_path)
    raw["finetune"] = {"strategy": "partial", "unfreeze_last_n_layers": 1}
    base = validate_config(raw)
    rows = compare_backbones(
        base, [str(tiny_backbone), str(mpnet)], 2, tmp_path / "out", train=train_locally, latency_calls=5
    )
    assert [row["label"] for row in rows] == [tiny_backbone.name, "tiny-mpnet"]
    _, mpnet_row = rows
    assert mpnet_row["steps"] == 2 and mpnet_row["latency"]["p50_ms"] > 0 and mpnet_row["stsb_before"] is not None
    manifest = json.loads((tmp_path / "runs" / "test-backbone-tiny-mpnet" / "export" / "mtl.json").read_text())
    assert manifest["pooling"] == "mean"
    for row in rows:  # the top layer (~8,500 parameters) and the heads train, not the embeddings (~980,000)
        assert 5_000 < row["parameters"]["trainable"] < 0.05 * row["parameters"]["total"]


def test_the_command_refuses_an_unknown_backbone_before_ray(tiny_backbone, tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(base_config(tiny_backbone, tmp_path), sort_keys=False))
    command = [sys.executable, "-m", "jobs.compare_backbones", "--config", str(path), "--output", str(tmp_path / "o")]
    completed = subprocess.run(
        [*command, "--backbones", f"{tiny_backbone},nobody/no-such-encoder"],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stdout[-2000:] + completed.stderr[-3000:]
    assert completed.stderr.startswith("error: --backbones: 'nobody/no-such-encoder' cannot be used")
    assert "training" not in completed.stdout
    assert not (tmp_path / "o").exists() and not (tmp_path / "runs").exists()


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_comparison_runs_every_backbone_on_ray(tiny_backbone, deep_backbone, tmp_path):
    raw = base_config(tiny_backbone, tmp_path)
    raw["scaling"] = {"num_workers": 1, "cpus_per_worker": 1}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    output = tmp_path / "compare"
    command = [sys.executable, "-m", "jobs.compare_backbones", "--config", str(path), "--steps", "3"]
    command += ["--backbones", f"{tiny_backbone},{deep_backbone}", "--latency-calls", "20", "--out", str(output)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=560, env=ENV)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    rows = json.loads(completed.stdout.strip().splitlines()[-1])
    assert rows == json.loads((output / "backbones.json").read_text())
    assert [row["backbone"] for row in rows] == [str(tiny_backbone), str(deep_backbone)]
    assert all(row["steps"] == 3 and row["latency"]["p50_ms"] > 0 and row["export_mb"] > 0 for row in rows)
    assert rows[0]["parameters"]["total"] < rows[1]["parameters"]["total"]
    assert [row["run_dir"].rsplit("/", 1)[-1] for row in rows] == [
        f"test-backbone-{tiny_backbone.name}", f"test-backbone-{deep_backbone.name}",
    ]  # fmt: skip
    assert len((output / "backbones.md").read_text().splitlines()) == 4
    assert (output / "backbones.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
