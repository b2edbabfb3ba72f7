"""The training recipe's `Session` under Ray Train: dataset shards, checkpoints and reports via `ray.train`."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist

from mtl.config import Config, ConfigError, validate_config
from mtl.data.length_grouping import Batch
from mtl.data.stream_position import EPOCH_END, StreamPosition
from mtl.errors import UserError
from mtl.train.recipe import run_training
from mtl.train.worker_allocator import allocator_in_use, keep_from_children

SHUFFLE_BUFFER_ROWS = 2_048
# Written into the run directory by a worker whose run hit a `UserError` (config, data, backbone): Ray Train retries
# every worker error up to `run.max_failures` times, and retrying a deterministic error only repeats it. Workers of
# the retry find this file and stop at once; the driver then raises the error (`raise_if_refused`).
REFUSED_FILE = "refused_in_worker.txt"


class RefusedInWorker(UserError):
    """A config/data error a training worker raised; the message is the worker's."""


def raise_if_refused(run_dir: str | Path) -> None:
    refused = Path(run_dir, REFUSED_FILE)
    if refused.is_file():
        raise RefusedInWorker(f"{refused.read_text().strip()} (raised in a training worker; not retried)")


class RaySession:
    def __init__(self, config: Config, run_dir: str, has_validation: bool, teacher_vectors: bool = False):
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.run_dir = Path(run_dir)
        self.micro_batch_size = config.train.micro_batch_size
        self.seed = config.train.seed
        self.has_validation = has_validation
        self.teacher_vectors = teacher_vectors
        self.position = StreamPosition()

    def train_batches(self) -> Iterator[Batch | None]:
        position = self.position
        resumed_mid_epoch = position.start_epoch in position.skip
        if resumed_mid_epoch:  # `train_rest` reads the rows to leave out when its pass starts (stream_position)
            if self.rank == 0:
                position.write_resume_file(self.run_dir)
            dist.barrier()
        # Every rank runs the same number of steps, so epochs simply repeat; a resumed run starts where its checkpoint
        # left the stream.
        for epoch in itertools.count(position.start_epoch):
            rest = resumed_mid_epoch and epoch == position.start_epoch
            shard = ray.train.get_dataset_shard("train_rest" if rest else "train")
            rows = shard.iter_batches(
                batch_size=self.micro_batch_size,
                batch_format="numpy",
                drop_last=True,
                local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS,
                local_shuffle_seed=self.seed + self.rank,
            )
            batches = 0
            for batch in position.epoch(epoch, rows, self.micro_batch_size, leave_out=False):
                batches += 1
                yield batch
            if rest and position.unexpected:  # drop_trained read another file than rank 0 wrote (stale storage?)
                print(
                    f"rank {self.rank}: WARNING {position.unexpected} rows trained before the checkpoint came back in "
                    f"the rest of epoch {epoch}; they were trained again",
                    flush=True,
                )
            # An epoch without one full micro batch would repeat forever (a resumed epoch may have none left).
            if batches == 0 and not rest:
                raise ConfigError(
                    f"rank {self.rank}: a whole epoch of its data.train shard held fewer rows than one micro batch "
                    f"(train.micro_batch_size={self.micro_batch_size}); lower it or scaling.num_workers"
                )
            yield EPOCH_END

    def validation_batches(self) -> Iterable[Batch]:
        if not self.has_validation:
            return iter(())
        shard = ray.train.get_dataset_shard("validation")
        return shard.iter_batches(batch_size=self.micro_batch_size, batch_format="numpy")

    @contextlib.contextmanager
    def latest_checkpoint(self):
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield directory

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


def train_worker(worker_config: dict) -> None:
    """`train_loop_per_worker` for `TorchTrainer`: the config arrives as plain data."""
    refused = Path(worker_config["run_dir"], REFUSED_FILE)
    if refused.is_file():  # a restart after a config/data error: end at once, the driver raises it
        return
    try:
        _train(worker_config)
    except UserError as error:
        partial = refused.with_name(f"{REFUSED_FILE}.{os.getpid()}")
        partial.write_text(str(error))
        partial.replace(refused)  # whole: a reader never sees half a message
        raise


def _train(worker_config: dict) -> None:
    for name, value in worker_config.get("env", {}).items():
        os.environ.setdefault(name, value)
    config = validate_config(worker_config["config"], source="worker config")  # the one validation on arrival
    session = RaySession(
        config,
        worker_config["run_dir"],
        worker_config["has_validation"],
        worker_config.get("teacher_vectors", False),
    )
    threads = config.scaling.torch_threads
    if threads:
        torch.set_num_threads(threads)
    node = ray.get_runtime_context().get_node_id()
    print(
        f"worker rank {session.rank}/{session.world_size} on node {node} pid {os.getpid()} "
        f"torch threads {torch.get_num_threads()}, {allocator_in_use()}",
        flush=True,
    )
    keep_from_children()
    result = run_training(config, session)
    if session.rank == 0 and worker_config.get("results") is not None:
        worker_config["results"].put(result)  # what training returned, to the driver (Ray Train drops it)
