"""Run one coroutine per item with at most *size* in flight, watched for progress: the window of
`Publisher.publish_many` and of the relay's claims.

A task is made for an item only once there is room for it, and room is handed out an eighth of
the window at a time: one wake-up of the feeder and one write (`bus.produce.confirms`) for many
items.
A semaphore around all tasks at once would hold every item's task and its waiter from the start
(20,000 of them for a 20,000-event batch) and wake the feeder once per item.

`watched(deadline)` is how both callers give up on a broker that stopped answering: no item
finished for *deadline* seconds (and the caller is not waiting out a broker alarm), and the
items in flight are cancelled. Each item's outcome stays readable afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def _never() -> bool:
    return False


class Window:
    """`await Window(size, work, n).run()` runs `work(0)` … `work(n - 1)`; exceptions are kept
    in `errors` (the others go on), `done` counts successes, `progress` is the `monotonic()`
    of the latest finish. Cancelling `run` cancels every item in flight."""

    def __init__(self, size: int, work: Callable[[int], Awaitable[None]], n: int) -> None:
        self.size = size
        self.work = work
        self.n = n
        self.done = 0
        self.errors: dict[int, Exception] = {}  # item -> what it raised
        self.progress = time.monotonic()
        self._finished = bytearray(n)  # 1: the item returned or raised (not cancelled)
        self._busy = 0  # items started and not finished
        self._refill_at = size - max(1, size // 8)
        self._room = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def failures(self) -> list[Exception]:
        """What the items raised, in item order."""
        return [self.errors[i] for i in sorted(self.errors)]

    def finished(self, i: int) -> bool:
        """Did item *i* return or raise? (False: never started, or cancelled in flight.)"""
        return bool(self._finished[i])

    async def run(self) -> None:
        tasks = self._tasks
        try:
            for i in range(self.n):
                while self._busy >= self.size:
                    self._room.clear()
                    await self._room.wait()
                self._busy += 1
                task = asyncio.create_task(self._one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.wait(tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            raise

    async def watched(self, deadline: float, *, paused: Callable[[], bool] = _never) -> bool:
        """`run()`, given up when no item finished for *deadline* seconds: the items in flight
        are cancelled, the rest never start, and it returns False. True when every item ran.

        While *paused()* is true (a broker alarm the caller waits out) the deadline does not
        run; it starts afresh when this first sees *paused()* false again (within a second).
        Cancelling this cancels the run.
        """
        batch = asyncio.create_task(self.run())
        was_paused = False
        try:
            while not batch.done():
                await asyncio.wait([batch], timeout=min(1.0, deadline))
                if paused():
                    was_paused = True
                elif was_paused:  # the pause ended since the last look: a whole deadline now
                    was_paused = False
                    self.progress = time.monotonic()
                elif not batch.done() and time.monotonic() - self.progress > deadline:
                    return False
        finally:  # given up, or our caller was cancelled: stop sending
            if not batch.done():
                batch.cancel()
                await asyncio.wait([batch])
        batch.result()
        return True

    async def _one(self, i: int) -> None:
        try:
            await self.work(i)
            self.done += 1
            self._finished[i] = 1
        except Exception as exc:
            self.errors[i] = exc
            self._finished[i] = 1
        finally:
            self.progress = time.monotonic()
            self._busy -= 1  # counted here, not by the done callback: the feeder may run first
            if self._busy <= self._refill_at:
                self._room.set()
