"""Single-process training (no Ray): the same recipe Ray Train workers run, in one gloo process."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mtl.train.local_session import train_locally
from tests.conftest import write_stsb

pytestmark = pytest.mark.timeout(300)
FAST = {"head_lr": 5e-3, "backbone_lr": 1e-3, "warmup_ratio": 0.0}


def run(make_config, capsys, **sections):
    result = train_locally(make_config(**sections))
    return result, capsys.readouterr().out


def logged_losses(output: str, task: str) -> list[float]:
    return [
        float(part.split("=")[1])
        for line in output.splitlines()
        if line.startswith("step ")
        for part in line.split()
        if part.startswith(f"loss/{task}=")
    ]


def test_loss_falls_and_export_is_complete(make_config, capsys, tmp_path):
    stsb = write_stsb(tmp_path / "stsb.parquet")
    result, output = run(
        make_config,
        capsys,
        data={"stsb": str(stsb)},
        finetune={"strategy": "full"},
        optim=FAST,
        train={"max_steps": 100, "log_every": 20, "eval_every": 50, "checkpoint_every": 50},
    )
    for task in ("sentiment", "topic"):
        losses = logged_losses(output, task)
        assert len(losses) == 5 and losses[-1] < 0.7 * losses[0], (task, losses)
    assert "samples/s=" in output and "eta=" in output
    progress = [line for line in output.splitlines() if line.startswith("step ")]
    lr_columns = [part.split("=")[0] for part in progress[0].split() if part.startswith("lr/")]
    assert lr_columns == ["lr/head:sentiment", "lr/head:topic", "lr/backbone_top", "lr/backbone_bottom"]
    assert result["steps"] == 100
    speed = result["throughput"]
    # Synthetic rows are 8-10 word pieces with [CLS]/[SEP]; batches pad to their longest row (max_seq_length 32).
    assert 8 <= speed["padded_tokens_per_s"] / speed["samples_per_s"] <= 12, speed
    assert 0 <= speed["data_wait_fraction"] < 1
    assert result["metrics"]["topic"]["count"] + result["metrics"]["sentiment"]["count"] == 64
    export = result["export_dir"]
    manifest = json.loads(open(f"{export}/mtl.json").read())
    assert manifest["pooling"] == "cls" and manifest["tasks"]["topic"]["labels"][0] == "ABBR"
    assert manifest["provenance"]["steps"] == 100
    compatibility = result["index_compatibility"]  # in the run summary, as in report.json
    assert compatibility == result["report"]["index_compatibility"] and compatibility["texts"] > 10
    assert 0 <= compatibility["recall_at_10_new_query_old_index"] <= 1 and compatibility["advice"]
    head = load_file(f"{export}/heads/topic.safetensors")
    assert head["weight"].shape == (6, 32) and head["bias"].shape == (6,)
    # The best validation checkpoint is exported too, and the run report has curves and STS-B before/after.
    best = json.loads(open(f"{result['best_dir']}/mtl.json").read())
    assert best["provenance"]["steps"] in (50, 100)
    report = result["report"]
    assert {Path(f).name for f in report["figures"]} == {
        "loss.png",
        "validation_loss.png",
        "validation_accuracy.png",
        "validation_macro_f1.png",
    }
    assert all(Path(f).stat().st_size > 1000 for f in report["figures"])
    stsb_result = report["stsb_spearman"]
    assert stsb_result["before"] > 0.8 and stsb_result["after"] > 0.8, stsb_result  # see write_stsb
    assert stsb_result["change"] == pytest.approx(stsb_result["after"] - stsb_result["before"])
    assert json.loads((Path(result["run_dir"]) / "report" / "report.json").read_text()) == report


def test_resume_continues_from_the_last_checkpoint(make_config, capsys):
    sections = {
        "optim": FAST,
        "train": {"max_steps": 10, "checkpoint_every": 5, "eval_every": 5, "log_every": 5},
    }
    run(make_config, capsys, **sections)
    sections["train"] = {**sections["train"], "max_steps": 15}
    result, output = run(make_config, capsys, **sections)
    assert "resumed from checkpoint at step 10" in output
    assert result["steps"] == 15
    assert [line.split()[1] for line in output.splitlines() if line.startswith("step ")] == ["15/15"]


def test_length_chunks_meter_fewer_padded_tokens_for_the_same_run(make_config, capsys):
    train = {"max_steps": 6, "checkpoint_every": 6, "eval_every": 6, "log_every": 3}
    data = {"length_window": 0}  # random batches: rows of 8-10 word pieces pad to their batch's longest
    one_pass, _ = run(make_config, capsys, optim=FAST, train=train, data=data)
    chunked, _ = run(make_config, capsys, optim=FAST, data=data, run={"name": "chunked"},
                     train={**train, "length_chunks": 4, "chunk_cost_tokens": 0})  # fmt: skip
    assert chunked["steps"] == 6
    # Same rows: real tokens per sample alike; with free passes each chunk pads to nothing.
    assert chunked["throughput"]["padded_per_real_token"] == pytest.approx(1.0)
    assert one_pass["throughput"]["padded_per_real_token"] > 1.0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: DeepSpeed's BF16_Optimizer and its fp32 gradients
def test_one_worker_skips_the_gradient_reduction_with_itself(make_config, capsys, monkeypatch, precision):
    # One worker at ZeRO-0 has nothing to average: no time goes to DeepSpeed's all-reduce, and the weights come out
    # as they do with it (bitwise: the reduction with itself is the identity).
    sections = {"finetune": {"strategy": "full"}, "optim": FAST, "train": {"max_steps": 8, "precision": precision}}
    skipped, _ = run(make_config, capsys, **sections)
    assert skipped["throughput"]["phase_ms"]["grad_sync"] == 0.0
    monkeypatch.setattr("mtl.train.recipe.skip_lone_reduction", lambda *args: None)
    reduced, _ = run(make_config, capsys, **sections, run={"name": "reduced"})
    assert reduced["throughput"]["phase_ms"]["grad_sync"] > 0.0
    for name in ("model.safetensors", "heads/topic.safetensors"):
        ours, theirs = load_file(f"{skipped['export_dir']}/{name}"), load_file(f"{reduced['export_dir']}/{name}")
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_frozen_head_does_not_move(make_config, capsys, tmp_path):
    first, _ = run(make_config, capsys, optim=FAST, train={"max_steps": 5})
    before = load_file(f"{first['export_dir']}/heads/topic.safetensors")
    second, _ = run(
        make_config,
        capsys,
        optim=FAST,
        model={"init_from": first["export_dir"]},
        finetune={"strategy": "head_only", "freeze_heads": ["topic"]},
        train={"max_steps": 5},
        run={"name": "head_b_only"},
    )
    after_topic = load_file(f"{second['export_dir']}/heads/topic.safetensors")
    after_sentiment = load_file(f"{second['export_dir']}/heads/sentiment.safetensors")
    sentiment_before = load_file(f"{first['export_dir']}/heads/sentiment.safetensors")
    assert torch.equal(before["weight"], after_topic["weight"])
    assert not torch.equal(sentiment_before["weight"], after_sentiment["weight"])


def test_export_loads_in_sentence_transformers_with_the_same_embeddings(make_config, capsys):
    from sentence_transformers import SentenceTransformer

    from mtl.config import validate_config
    from mtl.data.tokenization import tokenize
    from mtl.model.backbone import load_tokenizer
    from mtl.model.multitask import build_model

    result, _ = run(make_config, capsys, finetune={"strategy": "lora"}, optim=FAST, train={"max_steps": 5})
    export = result["export_dir"]
    config = validate_config({**make_config().model_dump(), "model": {"backbone": export, "max_seq_length": 32}})
    ours = build_model(config).eval()
    texts = ["the film was great", "who is the answer here ?"]
    tokens = tokenize(load_tokenizer(config.model, None), texts, 32)
    with torch.no_grad():
        expected = ours.embed(**tokens).numpy()
    theirs = SentenceTransformer(export, device="cpu").encode(texts, normalize_embeddings=True)
    cosine = (expected * theirs).sum(axis=1)
    assert np.all(cosine > 0.999), cosine
