"""Merging concurrent calls into one batch call, used by the ingress (requests) and the encoder (ingress calls).

Ray Serve's `@serve.batch` does this job, but it was slower in this app at both concurrency 32 and 1
(docs/benchmarks.md, "Own batcher against @serve.batch"); why was not established. Here an idle caller runs its
batch itself instead of handing it to a background loop. Same
contract: a list of items in, a list of results out, in order; runtime-settable size and wait; a batch is
everything that queued while the previous one ran, optionally after waiting `wait_s` to fill.

A failed batch is retried in halves, down to single items, so only the item that fails gets the error (one bad
request or text no longer fails everything merged with it); a batch that succeeds costs what it did before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """`await batcher(item)` -> that item's result from `func(items)`; one `func` call in flight at a time."""

    def __init__(
        self,
        func: Callable[[list[Item]], Awaitable[list[Result]]],
        max_batch_size: int,
        wait_s: float = 0.0,
        batch_errors: tuple[type[Exception], ...] = (),
        on_batch: Callable[[list[float]], None] | None = None,
    ):
        """`batch_errors`: failures that are no one item's fault (overload, a lost replica, a timeout): every caller
        gets them at once, unretried, since a retry in halves would only repeat them. `on_batch`: called as each batch
        leaves the queue with its items' queue waits in seconds (serve_app/metrics.py); not again for retried halves."""
        self.func = func
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.batch_errors = batch_errors
        self.on_batch = on_batch
        self._queue: list[tuple[Item, asyncio.Future, float]] = []  # (item, its future, when it queued)
        self._draining = False

    async def __call__(self, item: Item) -> Result:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future, time.perf_counter()))
        if not self._draining:  # this caller runs the next batch itself (no task hand-off when idle)
            self._draining = True
            try:
                await self._run_one()
            finally:
                self._draining = False
            if self._queue:  # what queued meanwhile is the next batch, run by a task so this caller returns now
                self._draining = True
                asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._run_one()
        finally:
            self._draining = False

    async def _run_one(self) -> None:
        if self.wait_s and len(self._queue) < self.max_batch_size:
            await asyncio.sleep(self.wait_s)
        batch, self._queue = self._queue[: self.max_batch_size], self._queue[self.max_batch_size :]
        if self.on_batch is not None:
            now = time.perf_counter()
            self.on_batch([now - queued for _, _, queued in batch])
        await self._run([(item, future) for item, future, _ in batch])

    async def _run(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        """`func` on `batch`; on failure each half again, one after the other (still one `func` call in flight),
        so the error reaches only the single items that fail on their own; every caller gets a result or an error."""
        batch = [(item, future) for item, future in batch if not future.done()]  # callers that gave up
        if not batch:
            return
        try:
            results = await self.func([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
        except Exception as error:
            if len(batch) > 1 and not isinstance(error, self.batch_errors):
                half = len(batch) // 2
                await self._run(batch[:half])
                await self._run(batch[half:])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
