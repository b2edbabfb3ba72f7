"""The one reader of an export: manifest, encoder, pooling, heads, and every piece of output maths.

`ExportedModel.load(export_dir)` is what jobs, the batch job and evaluation use. The Serve deployments
split the model across processes, so they call the same module-level functions on their part of it:
`read_manifest`, `model_info`, `load_task_head`, `task_outputs` (a task's raw output from pooled vectors, by type),
`task_entries` (those outputs as response entries), `normalize_rows`, `pair_cosine`. `encode` sorts texts by token
length so each batch pads to similar lengths, and returns rows in the caller's order.

Task types (`mtl.config.TaskConfig.type`) and their outputs, rows of pooled un-normalised vectors `(B, H)` in:
- classification: softmax of the head over the text's vector -> `{label, label_id, probabilities}`;
- pair_classification: softmax of the head over `pair_features(u, v)` of the two texts -> the same entries;
- multilabel: per-label sigmoid of the head; a label is chosen when its probability >= its threshold ->
  `{labels, label_ids, probabilities, thresholds}`;
- similarity: no head; the cosine of the two texts' vectors, mapped onto the task's `score_range` ->
  `{score, cosine}`.
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

from mtl.config import PAIR_TYPES
from mtl.data.tokenization import pooled_in_input_order, token_ids
from mtl.errors import UserError
from mtl.export_format import ExportError, UnknownTask
from mtl.export_format import head_path as head_path  # re-exported: the one place callers import from
from mtl.export_format import model_info as model_info
from mtl.export_format import read_manifest as read_manifest
from mtl.export_format import select_tasks as select_tasks
from mtl.export_format import task_info as task_info
from mtl.export_format import task_labels as task_labels
from mtl.export_format import task_type as task_type
from mtl.model.heads import build_heads, check_head, load_head_into, pair_features
from mtl.model.pooling import cosine_similarity, normalize, pool
from mtl.model.precision import LOW_PRECISION

PRECISIONS = ("fp32", "bf16")
Vectors = np.ndarray | torch.Tensor  # pooled vectors (B, H)


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


class TaskTypeError(UserError):
    """A task asked for the wrong kind of input (a pair task for single texts or the reverse)."""


def _tensor(vectors: Vectors, like: nn.Module | None = None) -> torch.Tensor:
    """A tensor copy of `vectors` (arrays may be read-only), on the device and in the dtype of `like`'s weights."""
    tensor = torch.tensor(vectors) if isinstance(vectors, np.ndarray) else vectors
    if like is None:
        return tensor.float()
    weight = next(like.parameters())
    return tensor.to(weight.device, weight.dtype)


@torch.inference_mode()
def head_probabilities(head: nn.Module, pooled: Vectors) -> np.ndarray:
    """Softmax over one head's logits for pooled, un-normalised vectors `(B, H)` -> `(B, n_labels)`."""
    return torch.softmax(head(_tensor(pooled, head)).float(), dim=-1).cpu().numpy()


@torch.inference_mode()
def pair_probabilities(head: nn.Module, left: Vectors, right: Vectors) -> np.ndarray:
    """Softmax over a pair head's logits for the two texts' pooled vectors `(B, H)` each -> `(B, n_labels)`."""
    features = pair_features(_tensor(left, head), _tensor(right, head))  # (B, 4H)
    return torch.softmax(head(features).float(), dim=-1).cpu().numpy()


@torch.inference_mode()
def multilabel_probabilities(head: nn.Module, pooled: Vectors) -> np.ndarray:
    """Each label's own sigmoid probability for pooled vectors `(B, H)` -> `(B, n_labels)` (rows need not sum to 1)."""
    return torch.sigmoid(head(_tensor(pooled, head)).float()).cpu().numpy()


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalised copies of `(B, H)` vectors (the embeddings served for similarity)."""
    return normalize(torch.tensor(vectors)).numpy()


def pair_cosine(left: Vectors, right: Vectors) -> np.ndarray:
    """Row-wise cosine similarity of two `(B, H)` batches."""
    return cosine_similarity(_tensor(left), _tensor(right)).numpy()


def similarity_scores(cosines: np.ndarray, score_range: Sequence[float]) -> np.ndarray:
    """Cosines mapped onto a similarity task's score scale: lo + clamp(cos, 0, 1) * (hi - lo)."""
    low, high = float(score_range[0]), float(score_range[1])
    return low + np.clip(cosines, 0.0, 1.0) * (high - low)


def chosen_labels(probabilities: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """`(B, n_labels)` bool: a multilabel row's label is chosen when its probability >= its threshold."""
    return probabilities >= np.asarray(thresholds, dtype=probabilities.dtype)[None, :]


def _single(kind: str, head: nn.Module, pooled: Vectors, pooled_pair: Vectors | None) -> np.ndarray:
    return multilabel_probabilities(head, pooled) if kind == "multilabel" else head_probabilities(head, pooled)


def _pair(kind: str, head: nn.Module | None, pooled: Vectors, pooled_pair: Vectors | None) -> np.ndarray:
    if pooled_pair is None:
        raise TaskTypeError(f"a {kind} task scores two texts; no second texts were given")
    if kind == "similarity":
        return pair_cosine(pooled, pooled_pair)
    return pair_probabilities(head, pooled, pooled_pair)


# Each type's output from pooled vectors: (type, head, pooled (B, H), second texts' pooled (B, H) or None) -> array.
_OUTPUTS = {"classification": _single, "multilabel": _single, "pair_classification": _pair, "similarity": _pair}


def task_outputs(
    task_type: str, head: nn.Module | None, pooled: Vectors, pooled_pair: Vectors | None = None
) -> np.ndarray:
    """One task's raw output for B rows: probabilities `(B, n_labels)` (softmax; multilabel: per-label sigmoid;
    pair_classification: over the pair's features) or a similarity task's cosines `(B,)` (`head` None). `pooled`:
    the rows' (first) texts' un-normalised vectors `(B, H)`; `pooled_pair`: their second texts' (pair types)."""
    return _OUTPUTS[task_type](task_type, head, pooled, pooled_pair)


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


def multilabel_entries(labels: Sequence[str], probabilities: np.ndarray, thresholds: Sequence[float]) -> list[dict]:
    """Per row: the chosen labels' names and ids (probability >= threshold), every label's probability and
    threshold."""
    chosen = chosen_labels(probabilities, thresholds)
    limits = dict(zip(labels, map(float, thresholds), strict=True))
    return [
        {
            "labels": [labels[i] for i in np.flatnonzero(chosen[row])],
            "label_ids": np.flatnonzero(chosen[row]).tolist(),
            "probabilities": dict(zip(labels, map(float, probabilities[row]), strict=True)),
            "thresholds": limits,
        }
        for row in range(probabilities.shape[0])
    ]


def similarity_entries(cosines: np.ndarray, score_range: Sequence[float]) -> list[dict]:
    """Per pair: the score on the task's scale and the cosine it came from."""
    scores = similarity_scores(cosines, score_range)
    return [{"score": float(score), "cosine": float(cosine)} for score, cosine in zip(scores, cosines, strict=True)]


def task_entries(info: dict, outputs: np.ndarray) -> list[dict]:
    """`task_outputs`' array as one response entry per row; `info`: the task's `task_info` entry (type, labels,
    thresholds, score_range)."""
    kind = info["type"]
    if kind == "similarity":
        return similarity_entries(outputs, info["score_range"])
    if kind == "multilabel":
        return multilabel_entries(info["labels"], outputs, info["thresholds"])
    return label_entries(info["labels"], outputs)


def select_typed_tasks(info: dict[str, dict], requested: Sequence[str] | None, pairs: bool) -> list[str]:
    """The tasks to run on texts (`pairs` False: single-text types) or on pairs (pair types): `None`/empty -> every
    task of that kind; a requested task of the other kind is an error naming it and its type."""
    wanted = [name for name, item in info.items() if (item["type"] in PAIR_TYPES) == pairs]
    if not requested:
        return wanted
    tasks = select_tasks(list(info), requested)
    wrong = {name: info[name]["type"] for name in tasks if name not in wanted}
    if wrong:
        noun = {True: "pairs (text, text_pair)", False: "single texts"}
        raise TaskTypeError("; ".join(f"task {name!r} is a {kind} task: it scores {noun[not pairs]}, not {noun[pairs]}"
                                      for name, kind in wrong.items()))  # fmt: skip
    return tasks


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
        # bf16 keeps the weights in bf16 (no per-call cast of every weight, which autocast does: one text's forward
        # 8.5 -> 5.6 ms on this AMX CPU; min cosine to fp32 0.9999, jobs.bench.embed / jobs.bench.serve report it).
        self.encoder = encoder.to(self.device, dtype=LOW_PRECISION.get(precision, torch.float32)).eval()
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_seq_length = max_seq_length
        self.labels = labels
        self.heads = heads.to(self.device).eval()
        self.manifest = manifest
        self.info = task_info(manifest)  # task -> type, labels, thresholds (multilabel), score_range (similarity)

    @classmethod
    def load(
        cls, export_dir: str | Path, device: str = "cpu", precision: str = "fp32", with_heads: bool = True
    ) -> ExportedModel:
        """The export's encoder, tokenizer and pooling; with `with_heads` the head of every task that has one (not
        similarity; the Serve encoder, whose heads live in their own deployments, loads none)."""
        export_dir = Path(export_dir)
        manifest = read_manifest(export_dir)
        labels = task_labels(manifest)
        hf_logging.disable_progress_bar()  # no tqdm bar per replica and per load
        encoder = AutoModel.from_pretrained(export_dir, local_files_only=True)
        names = [name for name in labels if task_type(manifest, name) != "similarity"] if with_heads else []
        heads = nn.ModuleDict({name: load_task_head(export_dir, name, manifest=manifest) for name in names})
        tokenizer = AutoTokenizer.from_pretrained(export_dir, local_files_only=True)
        return cls(
            encoder, tokenizer, manifest["pooling"], int(manifest["max_seq_length"]), labels, heads, manifest,
            device=device, precision=precision,
        )  # fmt: skip

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    def task_type(self, task: str) -> str:
        return self.info[task]["type"]

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64, pooling: str | None = None) -> torch.Tensor:
        """Un-normalised vectors for any number of texts, in their order; batches group similar lengths."""
        if not texts:
            return torch.zeros(0, self.dim)
        return self._encode_ids(token_ids(self.tokenizer, texts, self.max_seq_length), batch_size, pooling)

    @torch.inference_mode()
    def encode_counted(
        self, texts: Sequence[str], batch_size: int = 64, pooling: str | None = None
    ) -> tuple[torch.Tensor, np.ndarray]:
        """`encode`, and each text's tokens as the encoder read them (special tokens included); a text the window
        cut counts `max_seq_length + 1`. Only texts that fill the window are tokenised a second time, to tell."""
        if not texts:
            return torch.zeros(0, self.dim), np.zeros(0, dtype=np.int64)
        ids = token_ids(self.tokenizer, texts, self.max_seq_length)
        counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        full = np.flatnonzero(counts == self.max_seq_length)
        if len(full):
            longer = token_ids(self.tokenizer, [texts[i] for i in full], self.max_seq_length + 1)
            counts[full] = [len(row) for row in longer]
        return self._encode_ids(ids, batch_size, pooling), counts

    def _encode_ids(self, ids: list[list[int]], batch_size: int, pooling: str | None) -> torch.Tensor:
        return pooled_in_input_order(partial(self._pooled, pooling or self.pooling), self.tokenizer, ids, batch_size,
                                     self.device).cpu()  # fmt: skip

    def _pooled(self, pooling: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        return pool(pooling, hidden.float(), attention_mask)  # (B, H)

    def embed(self, texts: Sequence[str], normalized: bool = True, pooling: str | None = None) -> np.ndarray:
        pooled = self.encode(texts, pooling=pooling).numpy()
        return normalize_rows(pooled) if normalized else pooled

    def outputs(
        self, tasks: Sequence[str], pooled: Vectors, pooled_pair: Vectors | None = None
    ) -> dict[str, np.ndarray]:
        """Task -> `task_outputs` for rows `pooled (B, H)` (and, for pair tasks, their second texts' `(B, H)`)."""
        missing = [name for name in tasks if self.task_type(name) != "similarity" and name not in self.heads]
        assert not missing, f"no head loaded for task(s) {missing} (ExportedModel.load(with_heads=False)?)"
        return {name: task_outputs(self.task_type(name), self.heads[name] if name in self.heads else None, pooled,
                                   pooled_pair) for name in tasks}  # fmt: skip

    def head_probabilities(self, pooled: Vectors, tasks: Sequence[str]) -> dict[str, np.ndarray]:
        """Single-text tasks' probabilities `(B, n_labels)` for pooled vectors `(B, H)`."""
        return self.outputs(tasks, pooled)

    def encode_pairs(self, pairs: Sequence[Sequence[str]], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled vectors `(P, H)` of the first and of the second texts; each distinct text is encoded once."""
        texts = list(dict.fromkeys(text for pair in pairs for text in pair))
        pooled = self.encode(texts, batch_size)  # (distinct texts, H)
        row = {text: index for index, text in enumerate(texts)}
        left = torch.tensor([row[first] for first, _ in pairs], dtype=torch.long)
        right = torch.tensor([row[second] for _, second in pairs], dtype=torch.long)
        return pooled[left], pooled[right]

    def predict(self, texts: Sequence[str], tasks: Sequence[str] | None = None) -> list[dict]:
        """Per text: task -> its entry (`task_entries`); default every single-text task (classification,
        multilabel); a pair task is an error (`predict_pairs`)."""
        tasks = select_typed_tasks(self.info, tasks, pairs=False)
        outputs = self.outputs(tasks, self.encode(texts))
        entries = {name: task_entries(self.info[name], outputs[name]) for name in tasks}
        return [{name: entries[name][row] for name in tasks} for row in range(len(texts))]

    def predict_pairs(self, pairs: Sequence[Sequence[str]], tasks: Sequence[str] | None = None) -> list[dict]:
        """Per (text, text_pair): task -> its entry; default every pair task (pair_classification: label entries;
        similarity: {score, cosine}); a single-text task is an error (`predict`)."""
        tasks = select_typed_tasks(self.info, tasks, pairs=True)
        bad = [index for index, pair in enumerate(pairs) if len(pair) != 2]
        if bad:
            raise ValueError(f"pairs at index {bad[:5]} are not (text, text_pair)")
        if not pairs:
            return []
        outputs = self.outputs(tasks, *self.encode_pairs(pairs))
        entries = {name: task_entries(self.info[name], outputs[name]) for name in tasks}
        return [{name: entries[name][row] for name in tasks} for row in range(len(pairs))]
