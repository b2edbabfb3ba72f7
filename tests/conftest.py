"""Shared fixtures: a tiny random BERT (never downloaded) and Parquet written into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer, BertConfig, BertModel

from mtl.config import validate_config
from mtl.model.backbone import bundled_default_dir

SENTIMENT = ["negative", "positive"]
TOPIC = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]


def make_tiny_backbone(directory: Path, pooling: str | None = None, layers: int = 2) -> Path:
    """A 2-layer, 32-wide random BERT with the bundled MiniLM tokenizer; optional declared pooling."""
    tokenizer = AutoTokenizer.from_pretrained(bundled_default_dir(), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if pooling:
        (directory / "1_Pooling").mkdir()
        flags = {
            f"pooling_mode_{key}": pooling == mode
            for key, mode in [("cls_token", "cls"), ("mean_tokens", "mean"), ("max_tokens", "max")]
        }
        (directory / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **flags}))
    return directory


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    return make_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


def write_parquet(path: Path, columns: dict[str, list], schema: pa.Schema | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def synthetic_rows(count: int, seed: int = 0) -> dict[str, list]:
    """Learnable mixed-task rows: sentiment from a cue word, topic from the question word."""
    import random

    rng = random.Random(seed)
    cues = {0: ["awful", "boring", "terrible"], 1: ["great", "lovely", "wonderful"]}
    words = {0: "abbreviation", 1: "what", 2: "why", 3: "who", 4: "where", 5: "how many"}
    rows: dict[str, list] = {"text": [], "task": [], "label": []}
    for _ in range(count):
        if rng.random() < 0.5:
            label = rng.randrange(2)
            rows["text"].append(f"the film was {rng.choice(cues[label])} and long")
            rows["task"].append("sentiment")
        else:
            label = rng.randrange(6)
            rows["text"].append(f"{words[label]} is the answer here ?")
            rows["task"].append("topic")
        rows["label"].append(label)
    return rows


def write_stsb(path: Path) -> Path:
    """STS-B-shaped pairs whose ranking any encoder gets right: identical texts score 5, unrelated ones 0.

    Cosine of identical texts is exactly 1, above every other pair, so Spearman is ~0.87 for any model;
    a wrong pairing, a missing normalisation or a swapped column shows as a value far from that.
    """
    same = ["a cat sits on the mat", "stocks fell sharply", "who wrote hamlet ?", "the film was great"]
    other = ["the sky is blue", "a dog runs in the park", "how far is the moon ?", "rain is expected today"]
    return write_parquet(
        path,
        {
            "sentence1": same + same,
            "sentence2": same + other,
            "score": [5.0] * len(same) + [0.0] * len(other),
        },
    )


def config_dict(backbone: Path, tmp_path: Path, **sections) -> dict:
    train = write_parquet(tmp_path / "data" / "train.parquet", synthetic_rows(256))
    validation = write_parquet(tmp_path / "data" / "validation.parquet", synthetic_rows(64, seed=1))
    raw = {
        "model": {"backbone": str(backbone), "max_seq_length": 32},
        "tasks": {"sentiment": {"labels": SENTIMENT}, "topic": {"labels": TOPIC}},
        "data": {"train": [str(train)], "validation": [str(validation)]},
        "train": {
            "max_steps": 10,
            "micro_batch_size": 16,
            "eval_every": 5,
            "checkpoint_every": 5,
            "log_every": 5,
        },
        "run": {"name": "test", "storage_path": str(tmp_path / "runs")},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


@pytest.fixture
def make_config(tiny_backbone, tmp_path):
    def build(**sections):
        return validate_config(config_dict(tiny_backbone, tmp_path, **sections))

    return build


DEFAULT_TASKS = {"sentiment": SENTIMENT, "topic": TOPIC}


def make_tiny_export(directory: Path, backbone: Path, pooling: str = "mean", tasks: dict | None = None) -> Path:
    """An export (as jobs.train writes it) of the untrained tiny model with random heads; no training needed.
    `tasks`: name -> labels, or name -> a task config dict (type, labels, score_range; default: sentiment and
    topic)."""
    from mtl.inference.export import export_model
    from mtl.model.backbone import load_tokenizer
    from mtl.model.multitask import build_model

    config = validate_config(
        {
            "model": {"backbone": str(backbone), "max_seq_length": 32, "pooling": pooling},
            "finetune": {"strategy": "full"},  # what a run with a similarity task needs; the export is the same
            "tasks": {
                name: spec if isinstance(spec, dict) else {"labels": spec}
                for name, spec in (tasks or DEFAULT_TASKS).items()
            },
        }
    )
    model = build_model(config)
    return export_model(model, config, load_tokenizer(config.model), directory, metrics={}, steps=0)


@pytest.fixture(scope="session")
def tiny_export(tiny_backbone, tmp_path_factory) -> Path:
    return make_tiny_export(tmp_path_factory.mktemp("tiny-export") / "export", tiny_backbone)
