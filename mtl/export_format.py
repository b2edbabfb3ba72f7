"""Reading an export's manifest (`mtl.json`) and naming its parts: plain JSON, no torch, so a driver that only checks
an export (the batch job's pre-flight, an ingress) starts fast. `mtl.inference.exported_model` loads the model."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from mtl.errors import UserError


class ExportError(UserError):
    """A directory that is not a readable export; the message names the file."""


class UnknownTask(UserError):
    """A task name the export does not have."""


def read_manifest(export_dir: str | Path) -> dict:
    """An export's `mtl.json` (pooling, max_seq_length, tasks, ...); a clear error if the directory is not an export."""
    manifest_file = Path(export_dir) / "mtl.json"
    if not manifest_file.is_file():
        raise ExportError(f"{export_dir}: no mtl.json, not an export directory")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExportError(f"{manifest_file}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tasks"), dict):
        raise ExportError(f"{manifest_file}: not an export manifest (no 'tasks' mapping)")
    # Task names become file names (heads/<task>.safetensors): plain names only, as the config allows.
    bad = [name for name in manifest["tasks"] if not re.fullmatch(r"[A-Za-z0-9_-]+", name)]
    if bad:
        raise ExportError(f"{manifest_file}: task name(s) {bad} are not plain names (letters, digits, _ and -)")
    return manifest


def task_labels(manifest: dict) -> dict[str, list[str]]:
    """Task name -> label names in id order, in head order."""
    return {name: list(task["labels"]) for name, task in manifest["tasks"].items()}


def model_info(manifest: dict) -> dict:
    """What a client may know about an export: tasks and labels, pooling, dimension, provenance, metrics."""
    return {
        "tasks": task_labels(manifest),
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
    return Path(head_file) if head_file else Path(export_dir) / "heads" / f"{task}.safetensors"
