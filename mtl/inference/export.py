"""Trained model -> inference export: sentence-transformers layout + `heads/` + `mtl.json`.

Each export is written to a new directory `<parent>/versions/<name>-step<N>-<time>-<id>/` and published by turning
`<parent>/<name>` into a symlink to it in one atomic rename: retraining under the same name never deletes or rewrites
a directory a Serve replica or a batch job is reading, and a reader never sees a half-written export. Old versions
stay until you delete them.

export/
  config.json, model.safetensors, tokenizer files   the encoder (LoRA merged), Hugging Face format
  modules.json, sentence_bert_config.json           so `SentenceTransformer(export)` loads it
  1_Pooling/config.json, 2_Normalize/               the configured pooling, then L2 normalisation
  heads/<task>.safetensors                          weight (n_labels, in), bias (n_labels,); metadata task,
                                                    type, labels, encoder fingerprint (no file for similarity)
  mtl.json                                          pooling, max_seq_length, tasks (type, labels, thresholds,
                                                    score_range, validation), encoder_fingerprint, config,
                                                    metrics, provenance
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import peft
from transformers.utils import logging as hf_logging

from mtl.config import Config
from mtl.export_format import FORMAT_VERSION, head_path, write_manifest
from mtl.model.heads import save_head, weights_fingerprint
from mtl.model.multitask import MultiTaskModel


def _git_commit() -> str | None:
    try:
        completed = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None


def _sentence_transformers_files(directory: Path, pooling: str, max_seq_length: int) -> None:
    """modules.json, sentence_bert_config.json, 1_Pooling/, 2_Normalize/ in the layout every sentence-transformers
    version reads (3.x to 6.x checked by tests/test_export_st_versions.py). sentence-transformers saves the
    Transformer first (tokenizer `model_max_length`, config_sentence_transformers.json); the files that name and
    configure the modules are then rewritten in the older format, which all of them read."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    # modules.json types and config keys as sentence-transformers 2.x wrote them (all-MiniLM-L6-v2's files): every
    # version since reads them, 6.x without a warning. What 6.x writes itself (`sentence_transformers.base.modules...`,
    # Pooling's `embedding_dimension`) fails in 3.x-5.x, and so in Infinity, which pins sentence-transformers < 4.
    legacy_modules = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    legacy_pooling_flags = {
        "cls": "pooling_mode_cls_token",
        "mean": "pooling_mode_mean_tokens",
        "max": "pooling_mode_max_tokens",
    }
    assert pooling in legacy_pooling_flags, f"pooling {pooling!r} is not one of {sorted(legacy_pooling_flags)}"
    transformer = Transformer(str(directory), max_seq_length=max_seq_length)
    dimension = transformer.get_embedding_dimension()
    pooler = Pooling(dimension, pooling_mode=pooling)
    model = SentenceTransformer(modules=[transformer, pooler, Normalize()], device="cpu")
    quiet = logging.getLogger("sentence_transformers")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its "Saving model to ..." line: our caller reports the export itself
    try:
        model.save(str(directory), create_model_card=False)
    finally:
        quiet.setLevel(level)

    def write(name: str, content) -> None:
        (directory / name).write_text(json.dumps(content, indent=2) + "\n")

    write(
        "modules.json",
        [
            {"idx": idx, "name": str(idx), "path": path, "type": f"sentence_transformers.models.{kind}"}
            for idx, (path, kind) in enumerate(legacy_modules)
        ],
    )
    write("sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    write(
        "1_Pooling/config.json",
        {"word_embedding_dimension": dimension}
        | {flag: mode == pooling for mode, flag in legacy_pooling_flags.items()}
        | {"pooling_mode_mean_sqrt_len_tokens": False},
    )
    # 2_Normalize/config.json stays as 6.x wrote it: older versions ignore it. Nothing here needs 6.x any more, so
    # drop its version, which every older version warns about ("created with version 6.2.0 ... might cause errors").
    settings_file = directory / "config_sentence_transformers.json"
    settings = json.loads(settings_file.read_text())
    settings.get("__version__", {}).pop("sentence_transformers", None)
    write(settings_file.name, settings)


def new_version_dir(directory: Path, steps: int | str) -> Path:
    """A fresh, unique directory for one version of the export published as `directory`."""
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return Path(directory).parent / "versions" / f"{Path(directory).name}-step{steps}-{stamp}"


def publish(version: Path, directory: Path) -> Path:
    """Point `directory` (a symlink) at `version` with one atomic rename. A real directory already there (an export
    from before versioning) is moved into `versions/`, never deleted."""
    version, directory = Path(version), Path(directory)
    if directory.exists() and not directory.is_symlink():
        directory.rename(new_version_dir(directory, "unversioned"))
    link = directory.with_name(f".{directory.name}.{uuid.uuid4().hex[:8]}.link")
    link.symlink_to(os.path.relpath(version, directory.parent))
    os.replace(link, directory)
    return directory


def task_entry(task, metrics: dict) -> dict:
    """A task's `mtl.json` entry: type and labels, multilabel thresholds / similarity score range, and its
    validation figures (scalars only)."""
    entry: dict = {"type": task.type, "labels": list(task.labels)}
    if task.type == "multilabel":
        entry["thresholds"] = [float(t) for t in metrics.get("thresholds", [0.5] * len(task.labels))]
    if task.type == "similarity":
        entry["score_range"] = list(task.score_range)
    entry["validation"] = {key: value for key, value in metrics.items() if isinstance(value, (int, float))}
    return entry


def export_model(model: MultiTaskModel, config: Config, tokenizer, directory: Path, metrics: dict, steps: int) -> Path:
    """Write everything inference needs (and nothing else) to a new version and publish it as `directory`."""
    hf_logging.disable_progress_bar()  # one log line per export, not tqdm bars per shard
    directory = Path(directory)
    staging = new_version_dir(directory, steps)
    staging.mkdir(parents=True)
    try:
        _write_export(model, config, tokenizer, staging, metrics, steps)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # never published: nobody can be reading it
        raise
    return publish(staging, directory)


def _write_export(model: MultiTaskModel, config: Config, tokenizer, staging: Path, metrics: dict, steps: int) -> None:
    encoder = model.encoder
    if isinstance(encoder, peft.PeftModel):
        encoder = encoder.merge_and_unload()
    encoder = encoder.float()
    encoder.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    hidden_size = int(encoder.config.hidden_size)
    _sentence_transformers_files(staging, model.pooling, config.model.max_seq_length)
    fingerprint = weights_fingerprint(encoder)
    for name, head in model.heads.items():
        task = config.tasks[name]
        save_head(head, head_path(staging, name), name, task.labels, fingerprint, task.type)
    manifest = {
        "format_version": FORMAT_VERSION,
        "pooling": model.pooling,
        "max_seq_length": config.model.max_seq_length,
        "hidden_size": hidden_size,
        "encoder_fingerprint": fingerprint,
        "tasks": {name: task_entry(task, metrics.get(name, {})) for name, task in config.tasks.items()},
        "config": config.model_dump(mode="json"),
        "metrics": metrics,
        "provenance": {
            "backbone": config.model.backbone,
            "init_from": config.model.init_from,
            "train_files": list(config.data.train),
            "steps": steps,
            "git_commit": _git_commit(),
        },
    }
    write_manifest(staging, manifest)
