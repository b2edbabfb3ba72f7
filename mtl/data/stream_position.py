"""Where a rank is in its stream of training rows, saved with every checkpoint so that a resumed run continues it.

Every training row carries a `row_id` (on Ray, Ray Data's hash of file path and row position; locally, the row's
index; a copy drawn more than once in an epoch gets its own id, `mtl.data.sampling.draw_ids`) and the session tags
it with the `epoch` it was drawn in. The recipe marks the rows of each micro batch it trains on. A checkpoint stores,
for every rank, the ids it trained in each epoch that not all ranks have finished (`stream-rank<r>.npz`). On resume
the union over ranks is left out: the stream restarts at the earliest unfinished epoch without what was already
trained, so a one-pass run killed half-way trains the other half instead of the first half again. A rank only
counts an epoch finished once it has trained every row it read from it (a length-grouping window holds rows that
were read but not trained); sessions mark each epoch's end (`EPOCH_END`) so that a window is trained out before the
next epoch is read, and ranks, which run equal steps per epoch, are always in the same epoch at a checkpoint.

On Ray the rows to leave out must go before Ray Data splits the rest of the epoch between ranks: filtered after the
split, one rank could run out of its share before the others, ask for the next epoch and wait for them forever
(Ray Data starts an epoch for all splits at once) while they wait for it in the next gradient all-reduce. So rank 0
writes the ids to `<run_dir>/stream_resume.npy` and the rest of the epoch is read from a second dataset,
`train_rest`, whose map (`mtl.data.ray_datasets.drop_trained`) reads that file when the pass runs.

`train.log_rows` also writes what each step trained to `<run_dir>/trained_rows/rank-<r>.jsonl`; a resume cuts that
log back to the checkpoint's step, so it lists the rows behind the model the run ends with.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from mtl.data.length_grouping import Batch

FILE = "stream-rank{rank}.npz"
RESUME_FILE = "stream_resume.npy"
EPOCH_END = None  # what a session yields after an epoch's last batch


class StreamPosition:
    def __init__(self) -> None:
        self.start_epoch = 0  # the first epoch `epochs` hands out
        self.reading = 0  # the epoch being read now
        self.skip: dict[int, np.ndarray] = {}  # epoch -> sorted ids trained before the checkpoint (all ranks)
        self.read: dict[int, int] = {}  # epoch -> rows this rank handed out since it started
        self.trained: dict[int, list[np.ndarray]] = {}  # epoch -> ids this rank trained since it started
        self.unexpected = 0  # rows of the last epoch read that were trained before the checkpoint

    def epoch(self, epoch: int, batches: Iterable[Batch], batch_size: int, leave_out: bool = True) -> Iterator[Batch]:
        """One epoch of a rank's batches, tagged with `epoch`, without the rows trained before the checkpoint and
        re-cut to `batch_size` rows (a last partial batch is dropped, as Ray Data's `drop_last`).

        `leave_out=False` (Ray, where `drop_trained` left them out before the split): rows are only counted in
        `self.unexpected`, never dropped here, since dropping after the split would give ranks unequal shares."""
        self.reading = epoch
        skip = self.skip.get(epoch)
        self.unexpected = 0
        pending: list[Batch] = []
        for batch in batches:
            rows = len(batch["row_id"])
            batch = {**batch, "epoch": np.full(rows, epoch, dtype=np.int64)}
            if skip is not None:
                trained = is_in(np.asarray(batch["row_id"], dtype=np.uint64), skip)
                self.unexpected += int(trained.sum())
                if leave_out:
                    batch = {name: column[~trained] for name, column in batch.items()}
            if not pending and len(batch["row_id"]) == batch_size:  # nothing left out: passed on as it came
                self.read[epoch] = self.read.get(epoch, 0) + batch_size
                yield batch
                continue
            pending.append(batch)
            while sum(len(part["row_id"]) for part in pending) >= batch_size:
                merged = {name: np.concatenate([part[name] for part in pending]) for name in pending[0]}
                pending = [{name: column[batch_size:] for name, column in merged.items()}]
                self.read[epoch] = self.read.get(epoch, 0) + batch_size
                yield {name: column[:batch_size] for name, column in merged.items()}

    def mark(self, batch) -> None:
        """The rows of a micro batch the model was trained on."""
        epochs = np.asarray(batch["epoch"])
        ids = np.asarray(batch["row_id"], dtype=np.uint64)
        for epoch in np.unique(epochs):
            self.trained.setdefault(int(epoch), []).append(ids[epochs == epoch])

    def save(self, directory: str, rank: int, device: torch.device) -> None:
        """Write this rank's part (collective: every rank agrees on the earliest epoch not finished everywhere)."""
        unfinished = [self.reading] + [
            epoch for epoch, rows in self.read.items() if sum(map(len, self.trained.get(epoch, []))) < rows
        ]
        earliest = torch.tensor([min(unfinished)], dtype=torch.long, device=device)
        if dist.is_initialized():
            dist.all_reduce(earliest, op=dist.ReduceOp.MIN)
        earliest = int(earliest.item())
        for table in (self.skip, self.read, self.trained):  # finished everywhere: never needed again
            for epoch in [epoch for epoch in table if epoch < earliest]:
                del table[epoch]
        arrays = {"earliest": np.asarray(earliest)}
        for epoch in set(self.skip) | set(self.trained):
            restored = [self.skip[epoch]] if rank == 0 and epoch in self.skip else []  # the same on every rank
            parts = [np.empty(0, np.uint64), *restored, *self.trained.get(epoch, [])]
            arrays[f"epoch_{epoch}"] = np.concatenate(parts).astype(np.uint64)
        np.savez(Path(directory) / FILE.format(rank=rank), **arrays)

    def restore(self, directory: str) -> bool:
        """Load every rank's part of a checkpoint; False when it has none (written before stream positions)."""
        files = sorted(Path(directory).glob(FILE.format(rank="*")))
        if not files:
            return False
        parts: dict[int, list[np.ndarray]] = {}
        for path in files:
            with np.load(path) as saved:
                self.start_epoch = int(saved["earliest"])
                for name in saved.files:
                    if name.startswith("epoch_"):
                        parts.setdefault(int(name.removeprefix("epoch_")), []).append(saved[name])
        self.skip = {epoch: np.unique(np.concatenate(ids)) for epoch, ids in parts.items()}
        self.reading, self.read, self.trained = self.start_epoch, {}, {}
        return True

    def write_resume_file(self, run_dir: Path) -> Path:
        """The ids to leave out of the epoch the stream restarts in, for `drop_trained` (written whole, then renamed
        into place: a reader never sees part of it)."""
        path = run_dir / RESUME_FILE
        partial = path.with_suffix(".partial.npy")
        np.save(partial, self.skip.get(self.start_epoch, np.empty(0, np.uint64)))
        partial.replace(path)
        return path

    def describe(self) -> str:
        left_out = sum(len(ids) for ids in self.skip.values())
        return f"data stream continues in epoch {self.start_epoch}, leaving out {left_out} rows trained before"


def is_in(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Which of `ids` are in `sorted_ids` (sorted, unique). Binary search, not `np.isin`, which was 30x slower for a
    batch of ids against a million trained ones (docs/benchmarks.md, "Stream position lookups")."""
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[at] == ids


class RowLog:
    """`<run_dir>/trained_rows/rank-<r>.jsonl`: one line per optimizer step with the ids, epochs and task ids of the
    rows this rank trained on."""

    def __init__(self, run_dir: Path, rank: int) -> None:
        self.path = run_dir / "trained_rows" / f"rank-{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.batches: list = []

    def add(self, batch) -> None:
        self.batches.append(batch)

    def write(self, step: int) -> None:
        line = {
            "step": step,
            "row_id": [int(i) for batch in self.batches for i in batch["row_id"]],
            "epoch": [int(e) for batch in self.batches for e in batch["epoch"]],
            "task_id": [int(t) for batch in self.batches for t in batch["task_id"]],
        }
        with self.path.open("a") as log:
            log.write(json.dumps(line) + "\n")
        self.batches = []

    def cut_back(self, step: int) -> None:
        """Drop the steps after `step` (trained, then lost with the process); a torn last line goes too."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry["step"] <= step:
                kept.append(line + "\n")
        self.path.write_text("".join(kept))
