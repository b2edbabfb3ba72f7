"""Length-aware batching: every row once, batch sizes and task mix kept, far less padding, order still random."""

import numpy as np
import pytest

from mtl.data.length_grouping import length_grouped
from mtl.model.backbone import bundled_default_dir


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_default_dir(), local_files_only=True)


def row_batches(count: int, size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    batches = []
    for index in range(count):
        lengths = rng.integers(1, 40, size)  # words per text: short questions to long review sentences
        texts = np.array([" ".join(["word"] * int(n)) + f" {index}-{row}" for row, n in enumerate(lengths)], object)
        batches.append({"text": texts, "task_id": rng.integers(0, 2, size).astype(np.int32), "label": np.arange(size)})
    return batches


def padded_per_real(batches: list[dict]) -> float:
    lengths = [np.array([len(ids) for ids in batch["input_ids"]]) for batch in batches]
    return sum(len(x) * x.max() for x in lengths) / sum(x.sum() for x in lengths)


def test_window_sorts_rows_without_losing_or_resizing_anything(tokenizer):
    source = row_batches(count=20, size=16)
    grouped = list(length_grouped(source, tokenizer, max_seq_length=64, window=10, seed=0))
    random_order = list(length_grouped(source, tokenizer, max_seq_length=64, window=0, seed=0))
    assert [len(batch["task_id"]) for batch in grouped] == [16] * 20
    decode = lambda batch: sorted(tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True))  # noqa: E731
    assert sorted(sum((decode(b) for b in grouped), [])) == sorted(sum((decode(b) for b in random_order), []))
    # Every batch keeps the task mix it was drawn with (as a multiset over the window's batches).
    per_batch = sorted(int((b["task_id"] == 1).sum()) for b in grouped)
    assert per_batch == sorted(int((b["task_id"] == 1).sum()) for b in source)
    assert padded_per_real(random_order) > 1.5 and padded_per_real(grouped) < 1.15
    # Within a window the batches come out in shuffled order, not shortest first.
    longest = [max(len(ids) for ids in batch["input_ids"]) for batch in grouped[:10]]
    assert longest != sorted(longest)


def test_window_zero_keeps_the_stream_as_it_came(tokenizer):
    source = row_batches(count=3, size=4)
    out = list(length_grouped(source, tokenizer, max_seq_length=64, window=0, seed=0))
    for before, after in zip(source, out, strict=True):
        texts = tokenizer.batch_decode(after["input_ids"], skip_special_tokens=True)
        assert texts == [text.replace("-", " - ") for text in before["text"]]
        assert (after["task_id"] == before["task_id"]).all() and (after["label"] == before["label"]).all()


def test_a_short_task_is_not_packed_into_a_few_batches(tokenizer):
    rng = np.random.default_rng(1)
    source = []
    for _ in range(16):  # task 1 = short questions, task 0 = long sentences, mixed ~1:3 in every drawn batch
        task_ids = (rng.random(16) < 0.25).astype(np.int32)
        texts = np.array(["who is it ?" if t else " ".join(["long"] * int(rng.integers(10, 40))) for t in task_ids])
        source.append({"text": texts, "task_id": task_ids, "label": np.zeros(16, dtype=np.int64)})
    grouped = list(length_grouped(source, tokenizer, max_seq_length=64, window=16, seed=0))
    assert sorted(int(b["task_id"].sum()) for b in grouped) == sorted(int(b["task_id"].sum()) for b in source)


def test_labels_travel_with_their_text(tokenizer):
    source = row_batches(count=8, size=8)
    label_of = {text: label for batch in source for text, label in zip(batch["text"], batch["label"], strict=True)}
    for batch in length_grouped(source, tokenizer, max_seq_length=64, window=8, seed=1):
        for ids, label in zip(batch["input_ids"], batch["label"], strict=True):
            text = tokenizer.decode(ids, skip_special_tokens=True).replace(" - ", "-")
            assert label_of[text] == label


def test_a_window_never_spans_an_epoch_end_and_carries_row_ids_and_epochs(tokenizer):
    # Epochs of 7 batches, windows of 3: windows 3+3+1 per epoch, never 3 batches from two epochs.
    stream = []
    for epoch in range(3):
        for batch in row_batches(count=7, size=4, seed=epoch):
            rows = len(batch["task_id"])
            ids = np.arange(rows, dtype=np.uint64) + 100 * len(stream)
            stream.append({**batch, "row_id": ids, "epoch": np.full(rows, epoch)})
        stream.append(None)  # the session's epoch end
    grouped = list(length_grouped(stream, tokenizer, max_seq_length=64, window=3, seed=0))
    assert len(grouped) == 21
    assert all(len(set(batch["epoch"].tolist())) == 1 for batch in grouped)  # no batch mixes epochs
    assert [int(batch["epoch"][0]) for batch in grouped] == [0] * 7 + [1] * 7 + [2] * 7  # epochs in order
    source_ids = sorted(int(i) for batch in stream if batch for i in batch["row_id"])
    assert sorted(int(i) for batch in grouped for i in batch["row_id"]) == source_ids
