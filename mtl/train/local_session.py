"""Run the training recipe in one plain process, without Ray.

Used by the smoke tests, by GPU hosts that have PyTorch and DeepSpeed but no Ray, and as the
benchmark baseline. It owns a one-rank gloo (CPU) or NCCL (GPU) process group.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch.distributed as dist

from mtl.config import Config, ConfigError
from mtl.data.contract import read_validated, sources_by_file, split_files
from mtl.data.length_grouping import Batch
from mtl.data.sampling import draw_counts, draw_ids, draw_rates, row_weights
from mtl.data.stream_position import EPOCH_END, StreamPosition
from mtl.train.preflight import check_backbone, check_storage_path, check_tasks_have_rows
from mtl.train.recipe import run_training
from mtl.train.run_record import check_or_record
from mtl.train.run_result import finish_run


def ensure_single_process_group(use_gpu: bool) -> None:
    """A world of one, so DeepSpeed finds a process group instead of looking for MPI.

    It stays up for the life of the process: DeepSpeed caches the group, so a destroyed and
    re-created one breaks a second run in the same process.
    """
    if dist.is_initialized():
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")  # read by DeepSpeed
    # An in-memory store: a world of one needs no rendezvous address or port.
    dist.init_process_group("nccl" if use_gpu else "gloo", store=dist.HashStore(), rank=0, world_size=1)


def table_batches(
    table: pa.Table, indices: np.ndarray, batch_size: int, drop_last: bool, row_ids: np.ndarray | None = None
) -> Iterator[Batch]:
    texts = np.asarray(table.column("text").to_pylist(), dtype=object)
    pairs = np.asarray(table.column("text_pair").to_pylist(), dtype=object)
    task_ids = table.column("task_id").to_numpy()
    labels = table.column("label").to_numpy()
    scores = table.column("score").to_numpy()
    stop = len(indices) - (len(indices) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        rows = indices[start : start + batch_size]
        batch = {"text": texts[rows], "text_pair": pairs[rows], "task_id": task_ids[rows], "label": labels[rows],
                 "score": scores[rows]}  # fmt: skip
        if row_ids is not None:
            batch["row_id"] = row_ids[start : start + batch_size]
        yield batch


class LocalSession:
    """The `Session` of `mtl.train.recipe` for one process; checkpoints under `<run_dir>/checkpoints`."""

    rank = 0
    world_size = 1
    teacher_vectors = False  # no Ray Data here: a distill teacher runs online

    def __init__(self, config: Config):
        self.config = config
        self.position = StreamPosition()
        self.run_dir = check_storage_path(config)
        check_backbone(config)
        self.checkpoint_root = self.run_dir / "checkpoints"
        self.train_files = split_files(config, "train")
        self.train_table, self.train_report = read_validated([], config, "data.train", files=self.train_files)
        self.validation_table = None
        if validation_files := split_files(config, "validation"):
            self.validation_table, _ = read_validated([], config, "data.validation", files=validation_files)
        task_ids = self.train_table.column("task_id").to_numpy()
        weights = row_weights(self.train_table.column("text"), config.data)
        counts = {name: int((task_ids == i).sum()) for i, name in enumerate(config.task_names)}
        weight_sums = {name: float(weights[task_ids == i].sum()) for i, name in enumerate(config.task_names)}
        check_tasks_have_rows(counts, config)
        rates, self.epoch_rows = draw_rates(counts, weight_sums, config.data)
        if self.epoch_rows < config.train.micro_batch_size:
            raise ConfigError(
                f"data.train: an epoch holds {self.epoch_rows} rows, fewer than train.micro_batch_size="
                f"{config.train.micro_batch_size}; no step could run"
            )
        self.expected_draws = np.asarray([rates[name] for name in config.task_names])[task_ids] * weights  # per row

    def train_batches(self) -> Iterator[Batch | None]:
        rng = np.random.default_rng(self.config.train.seed)
        size = self.config.train.micro_batch_size
        rows = np.arange(len(self.expected_draws))
        # The same draw rule as the Ray Data path (`clean_rows`), drawn afresh every epoch; a row's id is its index.
        for epoch in itertools.count(self.position.start_epoch):
            copies = draw_counts(self.expected_draws, rng)
            order = rng.permutation(int(copies.sum()))
            indices, ids = np.repeat(rows, copies)[order], draw_ids(rows, copies)[order]
            if len(indices) < size:  # a (rare, random) epoch too small for a step
                continue
            batches = table_batches(self.train_table, indices, size, drop_last=True, row_ids=ids)
            yield from self.position.epoch(epoch, batches, size)
            yield EPOCH_END

    def validation_batches(self) -> Iterable[Batch]:
        if self.validation_table is None:
            return iter(())
        indices = np.arange(self.validation_table.num_rows)
        return table_batches(self.validation_table, indices, self.config.train.micro_batch_size, drop_last=False)

    @contextlib.contextmanager
    def latest_checkpoint(self):
        steps = sorted(self.checkpoint_root.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        yield str(steps[-1]) if steps else None

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        if checkpoint_dir is None:
            return
        target = self.checkpoint_root / f"step_{metrics['step']}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(checkpoint_dir, target)
        kept = sorted(self.checkpoint_root.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        for old in kept[: -self.config.run.keep_checkpoints]:
            shutil.rmtree(old)


def train_locally(config: Config) -> dict:
    """Train in this process; returns the recipe's result plus the run directory."""
    if config.scaling.num_workers != 1:
        raise ConfigError(
            f"scaling.num_workers={config.scaling.num_workers}: training without Ray runs one process; "
            "set scaling.num_workers=1 or train on Ray (jobs.train)"
        )
    session = LocalSession(config)
    config = config.with_steps_for(session.epoch_rows)
    sourced = set(sources_by_file(config))
    files = [str(Path(f).resolve()) for f in session.train_files]
    sources = [source.model_copy(update={"path": os.path.abspath(source.path)}) for source in config.data.sources]
    data = config.data.model_copy(update={"train": [f for f in files if f not in sourced], "sources": sources})
    config = session.config = config.model_copy(update={"data": data})
    check_or_record(session.run_dir, config, session.train_files)
    ensure_single_process_group(config.scaling.use_gpu)
    return finish_run(session.run_dir, config, run_training(config, session), session.train_report)
