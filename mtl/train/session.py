"""What the training recipe needs from whoever runs it: `mtl.train.ray_session` (Ray Train) or
`mtl.train.local_session` (one plain process)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from mtl.data.length_grouping import Batch
from mtl.data.stream_position import StreamPosition


class Session(Protocol):
    """What the recipe needs from whoever runs it (Ray Train or a plain process)."""

    rank: int
    world_size: int
    run_dir: Path
    teacher_vectors: bool  # training batches carry cached `teacher` vectors (retain.teacher: cached, on Ray)
    position: StreamPosition  # where `train_batches` is in the data stream (saved with checkpoints)

    def train_batches(self) -> Iterator[Batch | None]:
        """Endless micro batches of this rank's shard (re-shuffled every epoch), each row with its `row_id` and
        `epoch`, starting where `position` says; `None` after each epoch's last batch."""

    def validation_batches(self) -> Iterable[Batch]:
        """One pass over this rank's part of the validation rows."""

    def latest_checkpoint(self) -> AbstractContextManager[str | None]:
        """A local directory holding the checkpoint to resume from, or None."""

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        """Publish metrics (and this rank's checkpoint files) for this step."""
