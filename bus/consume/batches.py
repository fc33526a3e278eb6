"""Batch handlers: `@router.on(pattern, batch=500, flush="1s")` gets a list of events at once.

Each delivery is dispatched as usual (decoded, parsed, its id claimed, duplicates acked) and
then waits in its handler's `Batcher`, which calls the handler with every waiting event once
`batch` of them are in, or `flush` seconds after the first. Every delivery then takes the
outcome of its own item: all are acked when the handler returns; when it raises, each takes its
own way down the retry ladder (its own attempt count); an item the handler rejected with
`ctx.reject(i, reason)` is parked alone. The subscriber's prefetch is raised to the largest
batch, or a batch could never fill.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bus.consume.context import Context
from bus.errors import Reject

ItemResult = BaseException | None  # None: handled; Reject: park it; any other: retry it
RunBatch = Callable[[list[Any], "BatchContext"], Awaitable[None]]


class BatchContext:
    """The `ctx` of a batch handler: one `Context` per event, in the order of the events."""

    __slots__ = ("contexts", "rejected")

    def __init__(self, contexts: list[Context]) -> None:
        self.contexts = contexts
        self.rejected: dict[int, Reject] = {}

    def __len__(self) -> int:
        return len(self.contexts)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.contexts]

    def reject(self, index: int, reason: str = "rejected by handler") -> None:
        """Park the *index*-th event in the DLQ (`rejected`); the others are acked."""
        self.contexts[index]
        self.rejected[index] = Reject(reason)


class Batcher:
    """Collects events for one batch handler. `await add(event, ctx)` -> that item's result."""

    def __init__(self, size: int, flush: float, run: RunBatch, *, timer: bool = True) -> None:
        """*timer* False: batches run only when full or on `flush_now()` (TestBus)."""
        self.size = size
        self.flush = flush
        self._run_batch = run
        self._timer_on = timer
        self._items: list[tuple[Any, Context, asyncio.Future[ItemResult]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return len(self._items)

    def add(self, event: Any, ctx: Context) -> asyncio.Future[ItemResult]:
        """Put *event* in the next batch; the future is that item's result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ItemResult] = loop.create_future()
        self._items.append((event, ctx, future))
        if len(self._items) >= self.size:
            self.flush_now()
        elif len(self._items) == 1 and self._timer_on:
            self._timer = loop.call_later(self.flush, self.flush_now)
        return future

    def withdraw(self, future: asyncio.Future[ItemResult]) -> bool:
        """Take the item of *future* out of the batch that has not run yet (its delivery was cut
        off: the broker redelivers it). False when its batch already runs."""
        kept = [item for item in self._items if item[2] is not future]
        if len(kept) == len(self._items):
            return False
        self._items = kept
        future.cancel()
        if not kept and self._timer is not None:  # the next batch gets a timer of its own
            self._timer.cancel()
            self._timer = None
        return True

    def flush_now(self) -> None:
        """Run the handler now on whatever is waiting (also on shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._items = self._items, []
        if items:
            task = asyncio.get_running_loop().create_task(self._run(items))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, items: list[tuple[Any, Context, asyncio.Future[ItemResult]]]) -> None:
        ctx = BatchContext([c for _, c, _ in items])
        failure: BaseException | None = None
        try:
            await self._run_batch([e for e, _, _ in items], ctx)
        except Exception as exc:  # every item takes its own way down the ladder
            failure = exc
        for i, (_, _, future) in enumerate(items):
            if not future.done():
                future.set_result(ctx.rejected.get(i, failure))
