"""Task types in training: config rules, the data contract per type, the losses, and runs with all four types.

Tiny random encoders and synthetic rows that each type can learn: sentiment from a cue word (classification),
whether two texts are the same sentence (pair_classification), how much two texts share (similarity, from a
`data.sources` file with STS-B's column names and a held-out part), and which cues a text holds (multilabel).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtl.config import ConfigError, validate_config
from mtl.data.contract import DataError, read_split, read_validated
from mtl.train.losses import cosent_loss, multitask_loss
from tests.conftest import SENTIMENT, config_dict, write_parquet

pytestmark = pytest.mark.timeout(600)

SUBJECTS = ["the cat", "a man", "the film", "my dog", "the band", "a child", "the train", "her car"]
VERBS = ["sits on the mat", "plays a song", "runs in the park", "was great", "is very slow", "looks at the sky"]
TAGS = ["film", "question", "long"]
TASKS = {
    "sentiment": {"labels": SENTIMENT},
    "same": {"type": "pair_classification", "labels": ["same", "different"]},
    "sts": {"type": "similarity", "score_range": [0, 5]},
    "tags": {"type": "multilabel", "labels": TAGS},
}
SCHEMA = pa.schema([
    ("text", pa.string()), ("task", pa.string()), ("label", pa.int64()), ("text_pair", pa.string()),
    ("labels", pa.list_(pa.string())),
])  # fmt: skip


def sentence(rng: random.Random) -> tuple[str, str]:
    return rng.choice(SUBJECTS), rng.choice(VERBS)


def mixed_rows(count: int, seed: int) -> dict[str, list]:
    """sentiment, same (pair) and tags (multilabel) rows in one contract file."""
    rng = random.Random(seed)
    rows: dict[str, list] = {name: [] for name in SCHEMA.names}
    for _ in range(count):
        kind = rng.choice(["sentiment", "same", "tags"])
        text, pair, label, labels = None, None, None, None
        if kind == "sentiment":
            label = rng.randrange(2)
            text = f"the film was {rng.choice(['awful', 'boring'] if label == 0 else ['great', 'lovely'])}"
        elif kind == "same":
            subject, verb = sentence(rng)
            text = f"{subject} {verb}"
            label = rng.randrange(2)
            pair = text if label == 0 else " ".join(sentence(rng))
            if label == 1 and pair == text:
                label = 0
        else:
            subject, verb = sentence(rng)
            words = [subject, verb] + (["and then it stopped for a while"] if rng.random() < 0.5 else [])
            text = " ".join(words) + (" ?" if rng.random() < 0.5 else "")
            present = ["film" in text, "?" in text, len(text.split()) > 8]
            labels = [name for name, on in zip(TAGS, present, strict=True) if on]
        for name, value in zip(SCHEMA.names, [text, kind, label, pair, labels], strict=True):
            rows[name].append(value)
    return rows


def sts_rows(count: int, seed: int) -> dict[str, list]:
    """STS-B's columns: the same sentence scores 5, the same subject 2.5, nothing shared 0."""
    rng = random.Random(seed)
    rows: dict[str, list] = {"sentence1": [], "sentence2": [], "score": []}
    for _ in range(count):
        subject, verb = sentence(rng)
        others = [s for s in SUBJECTS if s != subject], [v for v in VERBS if v != verb]
        share = rng.choice([0, 1, 2])
        second = [f"{subject} {verb}", f"{subject} {rng.choice(others[1])}", " ".join(map(rng.choice, others))][share]
        rows["sentence1"].append(f"{subject} {verb}")
        rows["sentence2"].append(second)
        rows["score"].append([5.0, 2.5, 0.0][share])
    return rows


@pytest.fixture
def typed_config(tiny_backbone, tmp_path):
    def build(**sections):
        train = write_parquet(tmp_path / "data" / "mixed.parquet", mixed_rows(384, 0), SCHEMA)
        validation = write_parquet(tmp_path / "data" / "mixed-validation.parquet", mixed_rows(240, 1), SCHEMA)
        sts = write_parquet(tmp_path / "data" / "sts.parquet", sts_rows(400, 2))
        raw = config_dict(tiny_backbone, tmp_path, **sections)
        raw["tasks"] = TASKS
        raw["data"].update(
            train=[str(train)], validation=[str(validation)],
            sources=[{"path": str(sts), "task": "sts", "columns": {"text": "sentence1", "text_pair": "sentence2"},
                      "holdout": 0.2}],
        )  # fmt: skip
        raw["finetune"] = {"strategy": "full", **sections.get("finetune", {})}
        return validate_config(raw)

    return build


def test_config_rules_name_the_key(tiny_backbone, tmp_path):
    base = config_dict(tiny_backbone, tmp_path, finetune={"strategy": "full"})
    cases = [
        ({"s": {"type": "similarity"}}, {}, "tasks.s: a similarity task needs score_range"),
        ({"s": {"type": "similarity", "score_range": [0, 5], "labels": ["a", "b"]}}, {}, "has no labels"),
        ({"p": {"type": "pair_classification", "labels": ["a"]}}, {}, "needs at least 2 label names"),
        ({"c": {"labels": ["a", "b"], "score_range": [0, 1]}}, {}, "score_range is for similarity tasks"),
        ({"s": {"type": "similarity", "score_range": [0, 5]}}, {"finetune": {"strategy": "head_only"}},
         "train the encoder itself"),
        ({"c": {"labels": ["a", "b"]}}, {"train": {"max_steps": 1, "select_metrics": ["c.spearman"]}},
         "train.select_metrics: 'c.spearman' is not a task's metric"),
    ]  # fmt: skip
    for tasks, sections, message in cases:
        raw = {**base, "tasks": tasks, **sections}
        with pytest.raises(ConfigError, match=message):
            validate_config(raw)


def test_each_type_checks_its_own_columns_by_file_row_and_column(typed_config, tmp_path):
    config = typed_config()
    cases = [
        ({"task": "same", "text": "a b", "label": 0, "text_pair": None}, "column 'text_pair': text_pair is null"),
        ({"task": "same", "text": "a b", "label": 5, "text_pair": "c"}, "column 'label': label id is outside"),
        ({"task": "tags", "text": "a b", "labels": ["film", "music"]}, "column 'labels': a label name in labels"),
        ({"task": "tags", "text": "a b", "labels": None}, "column 'labels': labels is null"),
    ]
    for index, (row, message) in enumerate(cases):
        columns = {name: [None, row.get(name)] for name in SCHEMA.names}
        columns.update(text=["fine", row["text"]], task=["sentiment", row["task"]], label=[1, row.get("label")])
        path = write_parquet(tmp_path / f"bad{index}.parquet", columns, SCHEMA)
        with pytest.raises(DataError, match=rf"bad{index}.parquet: row 1, {message}"):
            read_validated([str(path)], config)
    scores = write_parquet(tmp_path / "scores.parquet", {"text": ["a", "b"], "task": ["sts", "sts"],
                                                           "text_pair": ["c", "d"], "score": [1.0, 7.5]})  # fmt: skip
    with pytest.raises(DataError, match=r"row 1, column 'score': score is outside .*score_range \[0.0, 5.0\]"):
        read_validated([str(scores)], config)


def test_a_source_is_renamed_and_its_holdout_is_disjoint_and_stable(typed_config):
    config = typed_config()
    train, _ = read_split(config, "train")
    validation, _ = read_split(config, "validation")
    sts_id = config.task_names.index("sts")

    def sts_pairs(table):
        mask = table.column("task_id").to_numpy() == sts_id
        return set(
            zip(
                np.asarray(table.column("text").to_pylist())[mask],
                np.asarray(table.column("text_pair").to_pylist())[mask],
                strict=True,
            )
        )

    held, rest = sts_pairs(validation), sts_pairs(train)
    assert not held & rest  # a pair's side depends on its texts only: duplicates share it
    held_rows = int((validation.column("task_id").to_numpy() == sts_id).sum())
    rest_rows = int((train.column("task_id").to_numpy() == sts_id).sum())
    assert held_rows + rest_rows == 400 and 0.1 < held_rows / 400 < 0.3, (held_rows, rest_rows)
    again, _ = read_split(config, "validation")
    assert sts_pairs(again) == held
    single = train.filter(pa.compute.equal(train.column("task_id"), config.task_names.index("sentiment")))
    assert single.column("text_pair").null_count == single.num_rows
    tags = train.filter(pa.compute.equal(train.column("task_id"), config.task_names.index("tags")))
    bits = tags.column("label").to_numpy()
    texts = tags.column("text").to_pylist()
    assert all(bool(bit & 2) == ("?" in text) for bit, text in zip(bits, texts, strict=True))


def test_losses_by_type():
    tasks = validate_config({"tasks": TASKS, "finetune": {"strategy": "full"}}).tasks
    cosines = torch.tensor([0.9, 0.5, 0.1])
    scores = torch.tensor([4.5, 2.5, 0.5])
    outputs = {"sentiment": torch.zeros(3, 2), "same": torch.zeros(3, 2), "sts": cosines, "tags": torch.zeros(3, 3)}
    task_ids = torch.tensor([2, 2, 2])
    total, per_task = multitask_loss(outputs, task_ids, torch.zeros(3, dtype=torch.long), {n: 1.0 for n in TASKS},
                                     scores=scores, tasks=tasks)  # fmt: skip
    assert per_task["sts"] == pytest.approx(0.0, abs=1e-6) and total == pytest.approx(0.0, abs=1e-6)
    assert cosent_loss(cosines, scores) < 0.01 < cosent_loss(cosines.flip(0), scores)
    labels = torch.tensor([0b101, 0, 0b010])
    outputs["tags"] = torch.tensor([[9.0, -9, 9], [-9, -9, -9], [-9, 9, -9]])
    _, right = multitask_loss(outputs, torch.full((3,), 3), labels, {n: 1.0 for n in TASKS}, tasks=tasks)
    outputs["tags"] = -outputs["tags"]
    _, wrong = multitask_loss(outputs, torch.full((3,), 3), labels, {n: 1.0 for n in TASKS}, tasks=tasks)
    assert right["tags"] < 0.01 < 1.0 < wrong["tags"]


def test_all_four_types_train_in_one_local_run_and_export(typed_config):
    from mtl.train.local_session import train_locally

    config = typed_config(
        optim={"head_lr": 5e-3, "backbone_lr": 1e-3, "warmup_ratio": 0.0},
        train={"max_steps": 150, "micro_batch_size": 32, "eval_every": 75, "checkpoint_every": 75, "log_every": 10},
    )
    result = train_locally(config)
    metrics = result["metrics"]
    history = [json.loads(line) for line in open(config.run.run_dir() / "history.jsonl")]
    losses = [record["loss"] for record in history if record["kind"] == "train"]
    for task in TASKS:  # every type's loss falls (each one's gradient reaches what it trains)
        first, last = (np.mean([loss[task] for loss in part]) for part in (losses[:3], losses[-3:]))
        assert last < 0.95 * first, (task, first, last, metrics)
    assert metrics["sentiment"]["accuracy"] > 0.9, metrics["sentiment"]
    assert metrics["same"]["accuracy"] > 0.65, metrics["same"]  # chance: 0.5
    assert metrics["sts"]["spearman"] > 0.6 and metrics["sts"]["count"] > 40, metrics["sts"]
    assert metrics["tags"]["micro_f1"] > 0.55 and len(metrics["tags"]["thresholds"]) == 3, metrics["tags"]
    manifest = json.loads(open(f"{result['export_dir']}/mtl.json").read())
    tasks = manifest["tasks"]
    assert {name: entry["type"] for name, entry in tasks.items()} == {
        "sentiment": "classification", "same": "pair_classification", "sts": "similarity", "tags": "multilabel",
    }  # fmt: skip
    assert tasks["sts"]["score_range"] == [0.0, 5.0] and tasks["sts"]["validation"]["spearman"] > 0.5
    assert tasks["tags"]["thresholds"] == metrics["tags"]["thresholds"]
    from safetensors import safe_open

    with safe_open(f"{result['export_dir']}/heads/same.safetensors", framework="pt") as handle:
        assert handle.get_tensor("weight").shape[1] == 4 * manifest["hidden_size"]
        assert handle.metadata()["type"] == "pair_classification"
    assert not Path(result["export_dir"], "heads", "sts.safetensors").exists()  # similarity: no head


@pytest.mark.ray
@pytest.mark.slow
def test_mixed_single_and_pair_rows_stream_through_ray_with_a_cached_teacher(typed_config, tmp_path):
    """The Ray path: a contract file and a renamed source read as one union, the source's holdout as validation,
    the teacher cache holding both texts of a pair row, two workers."""
    import os
    import subprocess
    import sys

    import yaml

    config = typed_config(
        train={"max_steps": 8, "micro_batch_size": 16, "eval_every": 8, "checkpoint_every": 8, "log_every": 4},
        scaling={"num_workers": 2, "cpus_per_worker": 0.5},
        retain={"method": "distill"},
    )
    path = tmp_path / "typed.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    completed = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--config", str(path)], capture_output=True, text=True, timeout=500,
        env=env,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    train, _ = read_split(config, "train")
    validation, _ = read_split(config, "validation")
    assert result["rows"]["rows_out"] == train.num_rows
    counts = np.array([result["metrics"][name]["count"] for name in TASKS])
    expected = np.bincount(validation.column("task_id").to_numpy(), minlength=4)
    # Every validation row is scored once, by its type; Ray Data's equal split between the 2 ranks leaves out at
    # most one row.
    assert (counts <= expected).all() and expected.sum() - counts.sum() <= 1, (counts, expected)
    assert "sts" in result["similarity_before"] and np.isfinite(result["metrics"]["sts"]["spearman"])
    output = completed.stdout + completed.stderr
    assert f"teacher embeddings: computing {train.num_rows} rows" in output and "computed online" not in output
    first_progress = next(line for line in output.splitlines() if "step 4/8" in line)
    assert "loss/sts=nan" not in first_progress  # the source's rows are shuffled in, not read after the others
    cache = sorted((tmp_path / "runs" / "teacher_cache").glob("*/*.parquet"))
    cached = pa.concat_tables([pq.read_table(part) for part in cache])
    pairs = np.asarray(cached.column("teacher_pair").to_pylist(), dtype=np.float32)
    has_pair = np.asarray([text is not None for text in cached.column("text_pair").to_pylist()])
    assert has_pair.any() and (np.abs(pairs[has_pair]).sum(axis=1) > 0).all()
    assert (pairs[~has_pair] == 0).all()
