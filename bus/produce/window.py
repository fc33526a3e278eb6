"""Run one coroutine per item with at most *size* in flight (`Publisher.publish_many`'s window).

A task is made for an item only once there is room for it, and room is handed out an eighth of
the window at a time: one wake-up of the feeder and one write (`bus.produce.confirms`) for many
items.
A semaphore around all tasks at once would hold every item's task and its waiter from the start
(20,000 of them for a 20,000-event batch) and wake the feeder once per item.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class Window:
    """`await Window(size, work, n).run()` runs `work(0)` … `work(n - 1)`; exceptions are kept
    in `failures` (the others go on), `done` counts successes, `progress` is the `monotonic()`
    of the latest finish. Cancelling `run` cancels every item in flight."""

    def __init__(self, size: int, work: Callable[[int], Awaitable[None]], n: int) -> None:
        self.size = size
        self.work = work
        self.n = n
        self.done = 0
        self.failures: list[Exception] = []
        self.progress = time.monotonic()
        self._busy = 0  # items started and not finished
        self._refill_at = size - max(1, size // 8)
        self._room = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

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

    async def _one(self, i: int) -> None:
        try:
            await self.work(i)
            self.done += 1
        except Exception as exc:
            self.failures.append(exc)
        finally:
            self.progress = time.monotonic()
            self._busy -= 1  # counted here, not by the done callback: the feeder may run first
            if self._busy <= self._refill_at:
                self._room.set()
