"""The one reader of an export: manifest, encoder, pooling, heads, and every piece of output maths.

`ExportedModel.load(export_dir)` is what jobs, the batch job and evaluation use. The Serve deployments
split the model across processes, so they call the same module-level functions on their part of it:
`read_manifest`, `model_info`, `load_task_head`, `head_probabilities`, `label_entries`,
`normalize_rows`, `pair_cosine`. `encode` sorts texts by token length so each batch pads to similar
lengths, and returns rows in the caller's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from mtl.data.tokenization import pooled_in_input_order, token_ids
from mtl.export_format import ExportError, UnknownTask
from mtl.export_format import head_path as head_path  # re-exported: the one place callers import from
from mtl.export_format import model_info as model_info
from mtl.export_format import read_manifest as read_manifest
from mtl.export_format import select_tasks as select_tasks
from mtl.export_format import task_labels as task_labels
from mtl.export_format import task_type as task_type
from mtl.model.heads import build_heads, check_head, load_head_into
from mtl.model.pooling import cosine_similarity, normalize, pool
from mtl.model.precision import autocast

PRECISIONS = ("fp32", "bf16")


def load_task_head(
    export_dir: str | Path, task: str, head_file: str | Path | None = None, manifest: dict | None = None
) -> nn.Linear:
    """One task's head from `head_path(...)`, checked against the export: task name, label names in id order and
    encoder fingerprint (head metadata vs `mtl.json`), then tensor shapes. A replacement `head_file` for an export
    written before fingerprints existed is refused (nothing to check it against); that export's own heads load.
    `manifest`: the export's, when the caller has read it already."""
    manifest = manifest or read_manifest(export_dir)
    if task not in manifest["tasks"]:
        raise UnknownTask(f"{export_dir}: no task {task!r}; the export has {list(manifest['tasks'])}")
    path = head_path(export_dir, task, head_file)
    labels = list(manifest["tasks"][task]["labels"])
    kind = task_type(manifest, task)
    if kind == "similarity":
        raise UnknownTask(f"{export_dir}: task {task!r} is a similarity task, it has no head (its score is a cosine)")
    encoder = manifest.get("encoder_fingerprint")
    if head_file and encoder is None:
        raise ExportError(
            f"{export_dir}: export has no encoder_fingerprint (format_version {manifest.get('format_version')}); "
            f"re-export it before rolling out head_file={head_file}"
        )
    if encoder is not None:
        check_head(path, task, labels, encoder, kind)
    head = build_heads(int(manifest["hidden_size"]), {task: (kind, len(labels))})[task]
    load_head_into(head, path)  # raises naming the file on a shape mismatch
    return head.eval()


@torch.inference_mode()
def head_probabilities(head: nn.Module, pooled: np.ndarray | torch.Tensor) -> np.ndarray:
    """Softmax over one head's logits for pooled, un-normalised vectors `(B, H)` -> `(B, n_labels)`."""
    pooled = torch.tensor(pooled) if isinstance(pooled, np.ndarray) else pooled  # a copy: arrays may be read-only
    weight = next(head.parameters())
    return torch.softmax(head(pooled.to(weight.device, weight.dtype)).float(), dim=-1).cpu().numpy()


def label_entries(labels: Sequence[str], probabilities: np.ndarray) -> list[dict]:
    """Per row: the best label's name and id and every label's probability."""
    best = probabilities.argmax(axis=1)
    return [
        {
            "label": labels[int(best[row])],
            "label_id": int(best[row]),
            "probabilities": dict(zip(labels, map(float, probabilities[row]), strict=True)),
        }
        for row in range(probabilities.shape[0])
    ]


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalised copies of `(B, H)` vectors (the embeddings served for similarity)."""
    return normalize(torch.tensor(vectors)).numpy()


def pair_cosine(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two `(B, H)` batches."""
    return cosine_similarity(torch.tensor(left), torch.tensor(right)).numpy()


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
    def load(
        cls, export_dir: str | Path, device: str = "cpu", precision: str = "fp32", with_heads: bool = True
    ) -> ExportedModel:
        """The export's encoder, tokenizer and pooling; with `with_heads` every task head too (the Serve encoder, whose
        heads live in their own deployments, loads none)."""
        export_dir = Path(export_dir)
        manifest = read_manifest(export_dir)
        labels = task_labels(manifest)
        hf_logging.disable_progress_bar()  # no tqdm bar per replica and per load
        encoder = AutoModel.from_pretrained(export_dir, local_files_only=True)
        names = labels if with_heads else []
        heads = nn.ModuleDict({name: load_task_head(export_dir, name, manifest=manifest) for name in names})
        tokenizer = AutoTokenizer.from_pretrained(export_dir, local_files_only=True)
        return cls(
            encoder, tokenizer, manifest["pooling"], int(manifest["max_seq_length"]), labels, heads, manifest,
            device=device, precision=precision,
        )  # fmt: skip

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64, pooling: str | None = None) -> torch.Tensor:
        """Un-normalised vectors for any number of texts, in their order; batches group similar lengths."""
        if not texts:
            return torch.zeros(0, self.dim)
        ids = token_ids(self.tokenizer, texts, self.max_seq_length)
        return pooled_in_input_order(partial(self._pooled, pooling or self.pooling), self.tokenizer, ids, batch_size,
                                     self.device).cpu()  # fmt: skip

    def _pooled(self, pooling: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, self.device.type):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        return pool(pooling, hidden.float(), attention_mask)  # (B, H)

    def embed(self, texts: Sequence[str], normalized: bool = True, pooling: str | None = None) -> np.ndarray:
        pooled = self.encode(texts, pooling=pooling).numpy()
        return normalize_rows(pooled) if normalized else pooled

    def head_probabilities(self, pooled: torch.Tensor | np.ndarray, tasks: Sequence[str]) -> dict[str, np.ndarray]:
        return {name: head_probabilities(self.heads[name], pooled) for name in tasks}

    def predict(self, texts: Sequence[str], tasks: Sequence[str] | None = None) -> list[dict]:
        """Per text: task -> label name, label id and every label's probability."""
        tasks = select_tasks(list(self.labels), tasks)
        probabilities = self.head_probabilities(self.encode(texts), tasks)
        entries = {name: label_entries(self.labels[name], probabilities[name]) for name in tasks}
        return [{name: entries[name][row] for name in tasks} for row in range(len(texts))]
