"""The one inference path (tokenise -> encode -> pool -> heads) over an export directory.

Shared by `jobs/evaluate.py`, the demo, batch jobs and serving; it needs nothing but the export.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from mtl.heads import build_heads, load_head_into
from mtl.pooling import normalize, pool
from mtl.tokenization import tokenize


class ExportedModel:
    """Loads `export/` once; `embed` and `predict` take plain lists of texts."""

    def __init__(self, export_dir: str | Path, device: str = "cpu"):
        self.export_dir = Path(export_dir)
        manifest_file = self.export_dir / "mtl.json"
        if not manifest_file.is_file():
            raise FileNotFoundError(f"{self.export_dir}: no mtl.json, not an export directory")
        self.manifest = json.loads(manifest_file.read_text())
        self.pooling = self.manifest["pooling"]
        self.max_seq_length = int(self.manifest["max_seq_length"])
        self.labels = {name: task["labels"] for name, task in self.manifest["tasks"].items()}
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.export_dir, local_files_only=True)
        self.encoder = AutoModel.from_pretrained(self.export_dir, local_files_only=True).to(self.device).eval()
        self.heads = build_heads(self.encoder.config.hidden_size, {n: len(v) for n, v in self.labels.items()})
        for name, head in self.heads.items():
            load_head_into(head, self.export_dir / "heads" / f"{name}.safetensors")
        self.heads.to(self.device).eval()

    @torch.inference_mode()
    def pooled(self, texts: Sequence[str], pooling: str | None = None) -> torch.Tensor:
        """Un-normalised sentence vectors; `pooling` overrides the export's mode (for comparisons only)."""
        tokens = tokenize(self.tokenizer, texts, self.max_seq_length)
        tokens = {key: value.to(self.device) for key, value in tokens.items()}
        hidden = self.encoder(**tokens).last_hidden_state  # (B, T, H)
        return pool(pooling or self.pooling, hidden, tokens["attention_mask"]).float()  # (B, H)

    def embed(self, texts: Sequence[str], normalized: bool = True, pooling: str | None = None) -> np.ndarray:
        pooled = self.pooled(texts, pooling)
        return (normalize(pooled) if normalized else pooled).cpu().numpy()

    @torch.inference_mode()
    def head_probabilities(self, pooled: torch.Tensor, tasks: Sequence[str]) -> dict[str, np.ndarray]:
        return {name: torch.softmax(self.heads[name](pooled), dim=-1).cpu().numpy() for name in tasks}

    def predict(self, texts: Sequence[str], tasks: Sequence[str] | None = None) -> list[dict]:
        """Per text: task -> label name, label id and every label's probability."""
        tasks = list(tasks or self.labels)
        unknown = [name for name in tasks if name not in self.labels]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; this model has {list(self.labels)}")
        probabilities = self.head_probabilities(self.pooled(texts), tasks)
        results = []
        for row in range(len(texts)):
            entry = {}
            for name in tasks:
                scores = probabilities[name][row]
                best = int(scores.argmax())
                entry[name] = {
                    "label": self.labels[name][best],
                    "label_id": best,
                    "probabilities": dict(zip(self.labels[name], map(float, scores), strict=True)),
                }
            results.append(entry)
        return results
