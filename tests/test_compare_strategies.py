"""`jobs.compare_strategies`: every strategy trained on Ray from one base config, one table and one picture."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from mtl.config import validate_config
from mtl.train.strategy_comparison import STRATEGIES, trial_config
from tests.conftest import config_dict, write_stsb


def test_trials_replace_strategy_and_retention_only(tiny_backbone, tmp_path):
    raw = config_dict(tiny_backbone, tmp_path)
    raw["finetune"] = {"strategy": "head_only", "freeze_heads": ["topic"], "lora": {"r": 4}}
    raw["data"]["stsb"] = str(write_stsb(tmp_path / "stsb.parquet"))
    raw["retain"] = {"wise_alphas": [0.5]}
    base = validate_config(raw)
    trials = {name: trial_config(base, name, steps=7) for name in STRATEGIES}
    assert {name: t.finetune.strategy for name, t in trials.items()} == {
        "head_only": "head_only", "lora": "lora", "partial": "partial", "full": "full", "full+distill": "full",
    }  # fmt: skip
    assert [name for name, t in trials.items() if t.retain.method == "distill"] == ["full+distill"]
    for trial in trials.values():
        assert trial.train.max_steps == 7 and trial.train.eval_every == 5 and trial.retain.wise_alphas == []
        assert trial.finetune.freeze_heads == [] and trial.finetune.lora.r == 4 and trial.data == base.data
    assert trials["full+distill"].run.name == "test-compare-full-distill"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_comparison_runs_every_strategy_on_ray(tiny_backbone, tmp_path):
    raw = config_dict(tiny_backbone, tmp_path)
    raw["data"]["stsb"] = str(write_stsb(tmp_path / "stsb.parquet"))
    raw["scaling"] = {"num_workers": 1, "cpus_per_worker": 1}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    output = tmp_path / "compare"
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "jobs.compare_strategies", "--config", str(path), "--steps", "3"]
    completed = subprocess.run(
        [*command, "--output", str(output)], capture_output=True, text=True, timeout=560, env=env
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    rows = json.loads(completed.stdout.strip().splitlines()[-1])
    assert [row["strategy"] for row in rows] == list(STRATEGIES)
    assert rows == json.loads((output / "strategies.json").read_text())
    by_name = {row["strategy"]: row for row in rows}
    assert all(row["steps"] == 3 and set(row["tasks"]) == {"sentiment", "topic"} for row in rows)
    heads = by_name["head_only"]["parameters"]["trainable"]
    assert heads < by_name["lora"]["parameters"]["trainable"] < by_name["partial"]["parameters"]["trainable"]
    assert by_name["partial"]["parameters"]["trainable"] < by_name["full"]["parameters"]["trainable"]
    assert by_name["head_only"]["stsb_after"] == pytest.approx(by_name["head_only"]["stsb_before"], abs=1e-6)
    table = (output / "strategies.md").read_text().splitlines()
    assert len(table) == 2 + len(STRATEGIES) and table[2].startswith("| head_only |")
    assert (output / "strategies.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
