"""Pooling: token states -> one sentence vector; `auto` resolution; L2 normalisation and cosine.

Each pooling is a pure function `(hidden (B, T, H), attention_mask (B, T)) -> (B, H)`;
padding positions never contribute to `mean` or `max`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from mtl.config import ConfigError

POOLING_MODES = ("cls", "mean", "max")


def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    summed = (hidden * mask).sum(dim=1)  # (B, H)
    counts = mask.sum(dim=1).clamp(min=1e-9)  # (B, 1)
    return summed / counts


def max_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    padding = (attention_mask == 0).unsqueeze(-1)  # (B, T, 1)
    return hidden.masked_fill(padding, torch.finfo(hidden.dtype).min).max(dim=1).values


_POOLERS = {"cls": cls_pool, "mean": mean_pool, "max": max_pool}


def pool(mode: str, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Apply a resolved pooling mode (`cls`, `mean` or `max`)."""
    if mode not in _POOLERS:
        raise ValueError(f"pooling mode {mode!r} is not one of {POOLING_MODES} (resolve 'auto' first)")
    return _POOLERS[mode](hidden, attention_mask)


def declared_pooling(backbone_dir: Path) -> str | None:
    """The pooling a sentence-transformers model directory declares (read by sentence-transformers), or None."""
    modules_file = Path(backbone_dir) / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
    paths = [module["path"] for module in modules if module.get("type", "").endswith("Pooling")] or ["1_Pooling"]
    config_file = Path(backbone_dir) / paths[0] / "config.json"
    if not config_file.is_file():
        return None
    from sentence_transformers.sentence_transformer.modules import Pooling

    hint = f"set model.pooling to one of {POOLING_MODES} explicitly"
    flags = {
        key: value for key, value in json.loads(config_file.read_text()).items() if key.startswith("pooling_mode_")
    }
    if flags and not any(flags.values()):  # the older format with every mode off: sentence-transformers would pick one
        raise ConfigError(f"{config_file}: declares no pooling mode; {hint}")
    try:
        mode = Pooling.load(str(config_file.parent), local_files_only=True).pooling_mode
    except ValueError as error:
        raise ConfigError(f"{config_file}: {error}; {hint}") from error
    if mode not in POOLING_MODES:
        raise ConfigError(f"{config_file}: declares pooling {mode!r}; {hint}")
    return mode


def resolve_pooling(requested: str, backbone_dir: Path) -> str:
    """`auto` -> the backbone's declared pooling, else `cls`; explicit modes pass through."""
    if requested != "auto":
        if requested not in _POOLERS:
            raise ConfigError(f"model.pooling={requested!r} is not one of auto, {', '.join(POOLING_MODES)}")
        return requested
    return declared_pooling(backbone_dir) or "cls"


def normalize(embeddings: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows so cosine similarity compares direction only."""
    return F.normalize(embeddings, p=2, dim=-1)


def cosine_similarity(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of two (B, H) batches."""
    return (normalize(left) * normalize(right)).sum(dim=-1)
