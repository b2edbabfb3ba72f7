"""Length-aware micro batches: tokenise a window of batches at once, sort its rows by token count, re-cut, shuffle.

A batch pads to its longest row. Random batches of the shared SST-2 + TREC mixture carry ~3 padded tokens per real
token. Within a window of micro batches the rows of each task are sorted by length and dealt back so that every
batch keeps its size *and its number of rows of each task* as drawn: batch k gets the k-th length slice of every
task. Sorting all rows together would pad less but would pack a short task (TREC questions) into a few batches,
and since each task's loss is a mean over its rows in the batch, that would quietly down-weight it. Every row
appears exactly once, steps per rank are unchanged, and the re-cut batches are shuffled so consecutive steps do
not walk from short to long texts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import numpy as np
from transformers import PreTrainedTokenizerBase

from mtl.data.tokenization import token_ids

# A row batch: text, text_pair (object; None for single-text rows), task_id (int32), label (int64), score (float32);
# training rows also row_id (uint64) and epoch (int64), and with cached distill targets teacher and teacher_pair
# (float32, (B, H)).
# A token batch: input_ids and pair_ids (lists of unpadded id lists; [] for a row without a pair), task_id, label
# (, score, teacher, ...); padded only on the device. A pair row's length is both its texts' tokens.
Batch = dict[str, np.ndarray]
TokenBatch = dict[str, np.ndarray | list[list[int]]]


def length_grouped(
    batches: Iterable[Batch | None],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    window: int,
    seed: int,
    timer=None,
) -> Iterator[TokenBatch]:
    """Token batches from row batches; with `window` >= 2, rows of `window` batches are sorted by length together.

    `timer` (a `mtl.train.progress.PhaseTimer`) charges the tokenisation to its `tokenize` phase.
    """
    rng = np.random.default_rng(seed)
    for group in _windows(batches, max(window, 1)):
        with timer.phase("tokenize") if timer else contextlib.nullcontext():
            regrouped = _regroup(group, tokenizer, max_seq_length, window >= 2, rng)
        yield from regrouped  # outside the phase: the consumer's time between batches is not tokenisation


def _windows(batches: Iterable[Batch | None], size: int) -> Iterator[list[Batch]]:
    """Runs of `size` batches; a window never mixes epochs: a session's `None` after an epoch's last batch
    (`mtl.data.stream_position.EPOCH_END`) ends the window, so an epoch trains exactly its own rows and is trained out
    before the next one is read."""
    group: list[Batch] = []
    for batch in batches:
        if batch is None:
            if group:
                yield group
            group = []
            continue
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _regroup(group: list[Batch], tokenizer, max_seq_length: int, by_length: bool, rng) -> list[TokenBatch]:
    texts = np.concatenate([batch["text"] for batch in group]).tolist()
    task_ids = np.concatenate([batch["task_id"] for batch in group])
    labels = np.concatenate([batch["label"] for batch in group])
    # Other columns ride along with their rows: scores, cached teacher vectors (Ray Data may hand a fixed-size list
    # out as rows of arrays, hence the stack), row ids and epochs (`mtl.data.stream_position`).
    extras = {
        name: np.concatenate([np.stack(batch[name]) for batch in group])
        for name in group[0]
        if name not in ("text", "text_pair", "task_id", "label")
    }
    ids = token_ids(tokenizer, texts, max_seq_length)
    pair_ids: list[list[int]] = [[] for _ in ids]
    pairs = np.concatenate([batch["text_pair"] for batch in group]) if "text_pair" in group[0] else ()
    with_pair = [row for row, text in enumerate(pairs) if text is not None]
    if with_pair:
        for row, row_ids in zip(with_pair, token_ids(tokenizer, [pairs[r] for r in with_pair], max_seq_length),
                                strict=True):  # fmt: skip
            pair_ids[row] = row_ids
    sizes = [len(batch["task_id"]) for batch in group]
    if not by_length:
        bounds = np.cumsum([0, *sizes])
        chunks = [np.arange(start, end) for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    else:
        lengths = np.fromiter((len(a) + len(b) for a, b in zip(ids, pair_ids, strict=True)), np.int64, len(ids))
        drawn_in = np.repeat(np.arange(len(group)), sizes)  # the batch each row was drawn in
        parts: list[list[np.ndarray]] = [[] for _ in group]
        for task in np.unique(task_ids):
            rows = np.flatnonzero(task_ids == task)
            rows = rows[np.lexsort((rng.random(len(rows)), lengths[rows]))]  # this task's rows, shortest first
            counts = np.bincount(drawn_in[task_ids == task], minlength=len(group))  # its rows per drawn batch
            # Batch k takes the k-th length slice of every task, as many rows of each as it was drawn with.
            for batch, part in enumerate(np.split(rows, np.cumsum(counts)[:-1])):
                parts[batch].append(part)
        chunks = [np.concatenate(batch_parts) for batch_parts in parts]
        chunks = [chunks[index] for index in rng.permutation(len(chunks))]
    out = [
        {"input_ids": [ids[row] for row in rows], "pair_ids": [pair_ids[row] for row in rows],
         "task_id": task_ids[rows], "label": labels[rows]}
        for rows in chunks
    ]  # fmt: skip
    for batch, rows in zip(out, chunks, strict=True):
        batch.update({name: column[rows] for name, column in extras.items()})
    return out
