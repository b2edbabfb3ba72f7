"""The export format, in one place: file names, the manifest (`mtl.json`) schema, reading and writing it, head paths.

An export is a sentence-transformers directory (encoder, tokenizer, pooling) plus `heads/<task>.safetensors` and
`mtl.json`; `mtl.inference.export` writes one, `mtl.inference.exported_model` loads one. Everything that names a
file of an export or reads or writes its manifest goes through here. Plain JSON and pydantic, no torch, so a driver
that only checks an export (the batch job's pre-flight, an ingress) starts fast. (The encoder fingerprint a manifest
records is computed over weights, in `mtl.model.heads.weights_fingerprint`.)
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mtl.errors import UserError

MANIFEST_FILE = "mtl.json"
HEADS_DIR = "heads"
FORMAT_VERSION = 3  # 2: heads carry task/labels/encoder metadata, mtl.json the encoder fingerprint; 3: task types
# Task names become file names (heads/<task>.safetensors): plain names only, as the config allows.
TASK_NAME = r"^[A-Za-z0-9_-]+$"


class ExportError(UserError):
    """A directory that is not a readable export; the message names the file."""


class UnknownTask(UserError):
    """A task name the export does not have."""


TASK_TYPES = ("classification", "pair_classification", "similarity", "multilabel")


class TaskEntry(BaseModel):
    """One task of an export. `type` (absent in exports before task types: classification); `labels` in id order
    (none for similarity); multilabel: `thresholds`, one per label, chosen on validation; similarity: `score_range`,
    the data's score scale (cosines 0..1 map linearly onto it); `validation`: the task's validation metrics."""

    model_config = ConfigDict(extra="allow")
    type: Literal["classification", "pair_classification", "similarity", "multilabel"] = "classification"
    labels: list[str] = Field(default_factory=list)
    thresholds: list[float] | None = None
    score_range: tuple[float, float] | None = None
    validation: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fits_type(self) -> TaskEntry:
        if self.type == "similarity" and self.score_range is None:
            raise ValueError("a similarity task needs score_range")
        if self.type != "similarity" and not self.labels:
            raise ValueError(f"a {self.type} task needs labels")
        if self.thresholds is not None and len(self.thresholds) != len(self.labels):
            raise ValueError(f"{len(self.thresholds)} thresholds for {len(self.labels)} labels")
        return self


class Manifest(BaseModel):
    """`mtl.json`: what a reader needs (pooling, sequence length, width, tasks and labels, encoder fingerprint) and
    what a person wants to know (the training config, metrics, provenance, the WiSE-FT choice). Unknown keys are
    kept, so an older reader still reads a newer export's manifest."""

    model_config = ConfigDict(extra="allow")
    format_version: int = 1
    pooling: str
    max_seq_length: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    tasks: dict[str, TaskEntry]
    encoder_fingerprint: str | None = None
    config: dict = Field(default_factory=dict)
    metrics: dict = Field(default_factory=dict)
    provenance: dict = Field(default_factory=dict)


def manifest_path(export_dir: str | Path) -> Path:
    return Path(export_dir) / MANIFEST_FILE


def is_export(directory: str | Path) -> bool:
    """Whether `directory` holds an export's manifest (a cheap check; `read_manifest` validates it)."""
    return manifest_path(directory).is_file()


def export_id(export_dir: str | Path) -> str:
    """The version id of the export `export_dir` names: the name of the directory it resolves to, which for a
    published export is `versions/<name>-step<N>-<time>-<id>` (`mtl.inference.export.publish` points `<name>` at it),
    and for an export from before versioning, or a copy, the directory's own name."""
    return Path(export_dir).resolve().name


def _validated(manifest: object, source: Path) -> dict:
    if isinstance(manifest, dict) and isinstance(manifest.get("tasks"), dict):
        bad = [name for name in manifest["tasks"] if not re.fullmatch(TASK_NAME, name)]
        if bad:
            raise ExportError(f"{source}: task name(s) {bad} are not plain names (letters, digits, _ and -)")
    try:
        return Manifest.model_validate(manifest).model_dump(exclude_unset=True)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, item['loc'])) or '(top level)'}: {item['msg']}"
                             for item in error.errors())  # fmt: skip
        raise ExportError(f"{source}: not an export manifest ({problems})") from None


def read_manifest(export_dir: str | Path) -> dict:
    """An export's `mtl.json`, validated (`Manifest`); an error naming the file if the directory is not an export."""
    source = manifest_path(export_dir)
    if not source.is_file():
        raise ExportError(f"{export_dir}: no {MANIFEST_FILE}, not an export directory")
    try:
        manifest = json.loads(source.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExportError(f"{source}: not valid JSON ({error})") from None
    return _validated(manifest, source)


def write_manifest(export_dir: str | Path, manifest: dict) -> None:
    """Validate `manifest` and write it as the export's `mtl.json`, whole (a temp file renamed over it)."""
    target = manifest_path(export_dir)
    _validated(manifest, target)
    partial = target.with_name(f".{MANIFEST_FILE}.{uuid.uuid4().hex}")
    partial.write_text(json.dumps(manifest, indent=2))
    os.replace(partial, target)


def task_labels(manifest: dict) -> dict[str, list[str]]:
    """Task name -> label names in id order (empty for similarity tasks), in head order."""
    return {name: list(task.get("labels", [])) for name, task in manifest["tasks"].items()}


def task_type(manifest: dict, task: str) -> str:
    return manifest["tasks"][task].get("type", "classification")


def task_info(manifest: dict) -> dict[str, dict]:
    """Task name -> type, labels, and what the type adds (thresholds, score_range) and its validation metrics."""
    info = {}
    for name, entry in manifest["tasks"].items():
        kind = entry.get("type", "classification")
        item = {"type": kind, "labels": list(entry.get("labels", []))}
        if kind == "multilabel":
            item["thresholds"] = entry.get("thresholds") or [0.5] * len(item["labels"])
        if kind == "similarity":
            item["score_range"] = list(entry["score_range"])
        item["validation"] = entry.get("validation", {})
        info[name] = item
    return info


def model_info(manifest: dict) -> dict:
    """What a client may know about an export: tasks and labels, pooling, dimension, provenance, metrics."""
    return {
        "tasks": task_labels(manifest),
        "task_info": task_info(manifest),
        "pooling": manifest["pooling"],
        "dim": int(manifest["hidden_size"]),
        "max_seq_length": int(manifest["max_seq_length"]),
        "provenance": manifest.get("provenance", {}),
        "metrics": manifest.get("metrics", {}),
    }


def select_tasks(known: Sequence[str], requested: Sequence[str] | None) -> list[str]:
    """`None`/empty -> every known task; otherwise the requested names (repeats dropped), each checked."""
    tasks = list(dict.fromkeys(requested)) if requested else list(known)
    unknown = [name for name in tasks if name not in known]
    if unknown:
        raise UnknownTask(f"unknown task(s) {unknown}; known: {list(known)}")
    return tasks


def head_path(export_dir: str | Path, task: str, head_file: str | Path | None = None) -> Path:
    """`head_file` if given, else the export's own `heads/<task>.safetensors`."""
    return Path(head_file) if head_file else Path(export_dir) / HEADS_DIR / f"{task}.safetensors"
