"""The one inference path (tokenise -> encode -> pool -> heads) over an export directory.

Shared by `jobs/evaluate.py`, the demo, the batch embedding job and the Serve deployments; it needs
nothing but the export. `encode` sorts texts by token length so each batch pads to similar lengths,
and returns rows in the caller's order.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from mtl.data.tokenization import tokenize
from mtl.model.heads import build_heads, load_head_into
from mtl.model.pooling import normalize, pool

PRECISIONS = ("fp32", "bf16")


def bf16_supported(device: torch.device) -> bool:
    """bf16 pays off on GPUs and on CPUs with native bf16 (avx512_bf16 / AMX); elsewhere it is emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.is_file() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def read_manifest(export_dir: str | Path) -> dict:
    """An export's `mtl.json` (pooling, max_seq_length, tasks, ...); a clear error if the directory is not an export."""
    manifest_file = Path(export_dir) / "mtl.json"
    if not manifest_file.is_file():
        raise FileNotFoundError(f"{export_dir}: no mtl.json, not an export directory")
    return json.loads(manifest_file.read_text())


class ExportedModel:
    """An encoder, its pooling and task heads; `ExportedModel.load(export_dir)` reads an export."""

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer,
        pooling: str,
        max_seq_length: int,
        labels: dict[str, list[str]],
        heads: nn.ModuleDict,
        manifest: dict,
        device: str = "cpu",
        precision: str = "fp32",
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}: expected one of {PRECISIONS}")
        self.device = torch.device(device)
        self.precision = precision
        self.encoder = encoder.to(self.device).eval()
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_seq_length = max_seq_length
        self.labels = labels
        self.heads = heads.to(self.device).eval()
        self.manifest = manifest

    @classmethod
    def load(cls, export_dir: str | Path, device: str = "cpu", precision: str = "fp32") -> ExportedModel:
        export_dir = Path(export_dir)
        manifest = read_manifest(export_dir)
        labels = {name: task["labels"] for name, task in manifest["tasks"].items()}
        encoder = AutoModel.from_pretrained(export_dir, local_files_only=True)
        heads = build_heads(encoder.config.hidden_size, {name: len(names) for name, names in labels.items()})
        for name, head in heads.items():
            load_head_into(head, export_dir / "heads" / f"{name}.safetensors")
        tokenizer = AutoTokenizer.from_pretrained(export_dir, local_files_only=True)
        return cls(
            encoder, tokenizer, manifest["pooling"], int(manifest["max_seq_length"]), labels, heads, manifest,
            device=device, precision=precision,
        )  # fmt: skip

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def pooled(self, texts: Sequence[str], pooling: str | None = None) -> torch.Tensor:
        """Un-normalised sentence vectors `(B, H)` float32; `pooling` overrides the export's (comparisons only)."""
        tokens = tokenize(self.tokenizer, texts, self.max_seq_length)
        return self._pooled_tokens(tokens, pooling)

    def _pooled_tokens(self, tokens: dict[str, torch.Tensor], pooling: str | None) -> torch.Tensor:
        tokens = {key: value.to(self.device) for key, value in tokens.items()}
        with self._autocast():
            hidden = self.encoder(**tokens).last_hidden_state  # (B, T, H)
        return pool(pooling or self.pooling, hidden.float(), tokens["attention_mask"])  # (B, H)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64, pooling: str | None = None) -> torch.Tensor:
        """Un-normalised vectors for any number of texts, in their order; batches group similar lengths."""
        if not texts:
            return torch.zeros(0, self.dim)
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_seq_length, padding=False)["input_ids"]
        order = np.argsort([len(row) for row in ids], kind="stable")
        out = torch.empty(len(texts), self.dim)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            padded = self.tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt")
            tokens = {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}
            out[torch.as_tensor(chunk)] = self._pooled_tokens(tokens, pooling).cpu()
        return out

    def embed(self, texts: Sequence[str], normalized: bool = True, pooling: str | None = None) -> np.ndarray:
        pooled = self.encode(texts, pooling=pooling)
        return (normalize(pooled) if normalized else pooled).numpy()

    def check_tasks(self, tasks: Sequence[str] | None) -> list[str]:
        tasks = list(tasks) if tasks else list(self.labels)
        unknown = [name for name in tasks if name not in self.labels]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; this model has {list(self.labels)}")
        return tasks

    @torch.inference_mode()
    def head_probabilities(self, pooled: torch.Tensor, tasks: Sequence[str]) -> dict[str, np.ndarray]:
        pooled = pooled.to(self.device)
        return {name: torch.softmax(self.heads[name](pooled), dim=-1).cpu().numpy() for name in tasks}

    def predict(self, texts: Sequence[str], tasks: Sequence[str] | None = None) -> list[dict]:
        """Per text: task -> label name, label id and every label's probability."""
        tasks = self.check_tasks(tasks)
        probabilities = self.head_probabilities(self.encode(texts), tasks)
        return [{name: self.label_entry(name, probabilities[name][row]) for name in tasks} for row in range(len(texts))]

    def label_entry(self, task: str, scores: np.ndarray) -> dict:
        best = int(scores.argmax())
        names = self.labels[task]
        return {
            "label": names[best],
            "label_id": best,
            "probabilities": dict(zip(names, map(float, scores), strict=True)),
        }
