"""The multi-task model: shared encoder -> pooling -> one output per task (a head, or for similarity the cosine).

A batch of B rows, P of them pairs, is one encoder pass over B + P texts: the B rows' texts, then the second texts
of the pair rows (`pair_rows`, their row indices). Single-text tasks read row vectors, pair tasks the pair's two.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mtl.config import Config, ConfigError
from mtl.model.backbone import load_encoder, starting_encoder_dir
from mtl.model.heads import build_heads, check_head, load_head_into, pair_features
from mtl.model.length_chunks import chunked, padded_tokens, plan_chunks
from mtl.model.pooling import normalize, pool, resolve_pooling


def task_specs(config: Config) -> dict[str, tuple[str, int]]:
    """Task name -> (type, number of labels), in task-id order."""
    return {name: (task.type, len(task.labels)) for name, task in config.tasks.items()}


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, pooling: str, specs: dict[str, tuple[str, int]]):
        """`specs`: task name -> (type, number of labels) (`task_specs`)."""
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.task_types = {name: kind for name, (kind, _) in specs.items()}
        self.heads = build_heads(encoder.config.hidden_size, specs)
        # (max passes, cost of a pass in padded tokens) for `pooled` (mtl.model.length_chunks); training sets it.
        self.length_chunks = (1, 0)
        self.last_padded_tokens = 0  # what the last `pooled` computed, padding included (the trainer's meter)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The sentence vector that feeds every head, not normalised. Texts must be right-padded (BERT-style
        tokenizers are); with `length_chunks` > 1 they run as length chunks, each cut to its own longest."""
        max_chunks, cost = self.length_chunks
        if max_chunks <= 1:
            self.last_padded_tokens = input_ids.numel()
            return self._pooled(input_ids, attention_mask)
        lengths = attention_mask.sum(dim=1).cpu().numpy()
        chunks = plan_chunks(lengths, max_chunks, cost)
        self.last_padded_tokens = padded_tokens(lengths, chunks)
        return chunked(self._pooled, input_ids, attention_mask, lengths, chunks)

    def _pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        # Accumulate in fp32 like inference (a bf16 sum over 128 tokens loses digits), then back to the heads' dtype.
        return pool(self.pooling, hidden.float(), attention_mask).to(hidden.dtype)  # (B, H)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pair_rows: torch.Tensor | None = None,
        return_pooled: bool = False,
    ):
        """Every task's output for every row: logits `(B, n_labels)` from a head, or for a similarity task the cosine
        `(B,)` of the pair's embeddings (0 for rows without a pair). `input_ids`/`attention_mask` are `(B + P, T)`:
        B row texts, then the P second texts of rows `pair_rows` `(P,)`. With `return_pooled`, also the pooled
        `(B + P, H)` of every text encoded (what distillation compares)."""
        pooled = self.pooled(input_ids, attention_mask)  # (B + P, H)
        rows = pooled.shape[0] - (0 if pair_rows is None else pair_rows.shape[0])
        first = pooled[:rows]  # (B, H)
        second = first  # rows without a pair: their own vector (their pair outputs are masked out of every loss)
        if pair_rows is not None and pair_rows.numel():
            second = first.index_copy(0, pair_rows, pooled[rows:])  # (B, H)
        outputs = {}
        for name, kind in self.task_types.items():
            if kind == "similarity":
                outputs[name] = torch.nn.functional.cosine_similarity(first.float(), second.float(), dim=-1)  # (B,)
            elif kind == "pair_classification":
                outputs[name] = self.heads[name](pair_features(first, second))
            else:
                outputs[name] = self.heads[name](first)
        return (outputs, pooled) if return_pooled else outputs

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised sentence embeddings `(B, H)` for similarity."""
        return normalize(self.pooled(input_ids, attention_mask))


def build_model(config: Config) -> MultiTaskModel:
    """Encoder from `model.backbone` (or `model.init_from`), pooling resolved, heads for `tasks`."""
    source = starting_encoder_dir(config.model)
    encoder = load_encoder(config.model, source)
    pooling = resolve_pooling(config.model.pooling, source)
    torch.manual_seed(config.train.seed)
    model = MultiTaskModel(encoder, pooling, task_specs(config))
    if config.model.init_from:
        load_init_heads(model, config, source)
    return model


def load_init_heads(model: MultiTaskModel, config: Config, source: Path) -> None:
    """Heads of `model.init_from` for the tasks it has, checked by label names, not only by shape.

    A task the export lacks starts from random weights (said once); if that task is frozen, it is an error.
    """
    from mtl.export_format import head_path, read_manifest, task_labels, task_type

    manifest = read_manifest(source)
    exported = task_labels(manifest)
    for name, head in model.heads.items():
        labels, kind = list(config.tasks[name].labels), config.tasks[name].type
        if name not in exported:
            if name in config.finetune.freeze_heads:
                raise ConfigError(
                    f"model.init_from={source}: has no head for task {name!r} (it has {list(exported)}), "
                    f"but finetune.freeze_heads keeps {name!r} fixed: it would be exported untrained"
                )
            print(f"model.init_from: {source} has no task {name!r}; its head starts from random weights")
            continue
        if task_type(manifest, name) != kind:
            raise ConfigError(
                f"model.init_from={source}: task {name!r} is a {task_type(manifest, name)} task there, "
                f"tasks.{name}.type is {kind}"
            )
        if exported[name] != labels:
            raise ConfigError(
                f"model.init_from={source}: task {name!r} was trained with labels {exported[name]}, "
                f"tasks.{name}.labels is {labels}; list them in the export's order"
            )
        path = head_path(source, name)
        if "encoder_fingerprint" in manifest:  # exports before format 2 carry no head metadata
            check_head(path, name, labels, manifest["encoder_fingerprint"], kind)
        load_head_into(head, path)
