"""A resumed run continues the data stream where its checkpoint left it (issue 13.2)."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mtl.data.sampling import draw_ids
from mtl.data.stream_position import RowLog, StreamPosition
from mtl.train.local_session import train_locally

pytestmark = pytest.mark.timeout(300)


def rank_batches(ids: np.ndarray, size: int):
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        yield {"row_id": chunk, "task_id": np.zeros(len(chunk), dtype=np.int32)}


def test_a_restored_position_leaves_out_exactly_the_trained_rows_and_recuts_full_batches(tmp_path):
    rows = np.arange(10, dtype=np.uint64)
    copies = np.array([1, 2, 1, 1, 3, 1, 1, 1, 1, 1])  # rows 1 and 4 drawn more than once: every copy its own id
    ids = draw_ids(rows, copies)
    assert len(set(ids.tolist())) == 13
    before = StreamPosition()
    stream = before.epoch(0, rank_batches(ids, 4), 4)
    trained = [next(stream), next(stream)]  # a third batch is read but never trained (a length-grouping window)
    next(stream)
    for batch in trained:
        before.mark(batch)
    before.save(str(tmp_path), rank=0, device=__import__("torch").device("cpu"))

    after = StreamPosition()
    assert after.restore(str(tmp_path)) and after.start_epoch == 0
    rest = list(after.epoch(0, rank_batches(ids, 4), 4))
    seen = [int(i) for batch in trained + rest for i in batch["row_id"]]
    assert all(len(batch["row_id"]) == 4 for batch in rest) and all((b["epoch"] == 0).all() for b in rest)
    assert len(seen) == len(set(seen)) == 12  # 13 draws, no repeat, one short of a full batch dropped
    # The next epoch is whole again.
    assert sum(len(b["row_id"]) for b in after.epoch(1, rank_batches(ids, 4), 4)) == 12


def test_a_checkpoint_keeps_an_epoch_until_every_row_read_from_it_is_trained(tmp_path):
    position = StreamPosition()
    first = list(position.epoch(0, rank_batches(np.arange(8, dtype=np.uint64), 4), 4))
    second = position.epoch(1, rank_batches(np.arange(8, dtype=np.uint64), 4), 4)
    next(second)  # reading epoch 1, but epoch 0's last batch is still waiting in a window
    position.mark(first[0])
    position.save(str(tmp_path), rank=0, device=__import__("torch").device("cpu"))
    restored = StreamPosition()
    restored.restore(str(tmp_path))
    assert restored.start_epoch == 0 and set(restored.skip) == {0}


def logged_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "trained_rows" / "rank-0.jsonl").read_text().splitlines()]


def stop_and_resume(make_config, capsys, window: int, stop: int, end: int) -> tuple[str, list[dict], list[dict]]:
    """Train to step `stop` (checkpointing at it), then resume to `end`: the output, the row log, the same run's
    row log had it never stopped."""
    sections = {
        "data": {"length_window": window},
        "train": {"max_steps": stop, "checkpoint_every": stop, "eval_every": 100, "log_every": 100, "log_rows": True},
    }
    assert train_locally(make_config(**sections))["steps"] == stop
    sections["train"] = {**sections["train"], "max_steps": end}
    result = train_locally(make_config(**sections))
    output = capsys.readouterr().out
    assert result["steps"] == end
    straight = train_locally(make_config(**{**sections, "run": {"name": "straight"}}))
    return output, logged_rows(Path(result["run_dir"])), logged_rows(Path(straight["run_dir"]))


def per_task(log: list[dict]) -> Counter:
    return Counter(task for entry in log for task in entry["task_id"])


def test_a_one_pass_run_stopped_mid_epoch_and_resumed_trains_every_row_once(make_config, capsys):
    # 256 rows, 16 per batch: one epoch is 16 steps. Stop after 6 (windows of 4 batches: 8 read, 6 trained), resume.
    output, log, unstopped = stop_and_resume(make_config, capsys, window=4, stop=6, end=16)
    assert "resumed from checkpoint at step 6" in output and "leaving out 96 rows" in output
    assert [entry["step"] for entry in log] == list(range(1, 17))
    seen = Counter(row for entry in log for row in entry["row_id"])
    assert len(seen) == 256 and set(seen.values()) == {1}, "every row exactly once"
    assert {epoch for entry in log for epoch in entry["epoch"]} == {0}
    # The same rows, task by task, as the run that was never stopped.
    assert per_task(unstopped) == per_task(log) and len(per_task(log)) == 2
    assert {row for entry in unstopped for row in entry["row_id"]} == set(seen)


def test_a_two_epoch_run_stopped_in_its_second_epoch_trains_every_row_twice_once_per_epoch(make_config, capsys):
    # 16 steps an epoch, windows of 5 (epochs end mid-window); stop at step 22, in epoch 1, and resume to 32.
    output, log, unstopped = stop_and_resume(make_config, capsys, window=5, stop=22, end=32)
    assert "resumed from checkpoint at step 22" in output and "continues in epoch 1, leaving out 96 rows" in output
    assert [entry["step"] for entry in log] == list(range(1, 33))
    per_epoch = Counter(
        (epoch, row) for entry in log for epoch, row in zip(entry["epoch"], entry["row_id"], strict=True)
    )
    assert len(per_epoch) == 512 and set(per_epoch.values()) == {1}, "each row once in each of the two epochs"
    assert {epoch for epoch, _ in per_epoch} == {0, 1}
    assert per_task(unstopped) == per_task(log)


def test_the_row_log_is_cut_back_to_the_checkpoint_a_run_resumes_from(tmp_path):
    log = RowLog(tmp_path, rank=0)
    for step in (1, 2, 3):
        log.add({"row_id": [step], "epoch": [0], "task_id": [0]})
        log.write(step)
    with log.path.open("a") as torn:
        torn.write('{"step": 4, "row_')  # the process died mid-line
    log.cut_back(2)
    assert [entry["step"] for entry in logged_rows(tmp_path)] == [1, 2]
