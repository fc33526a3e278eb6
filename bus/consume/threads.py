"""Plain `def` handlers in threads: `size` at a time, a timeout counted from the handler's start.

A thread cannot be stopped. A handler over its timeout is left behind: its thread runs on
outside the pool (its result ignored) and a fresh pool takes the next events, so a stuck
handler never holds a slot the events behind it wait for. The clock starts when the handler
starts in its thread, not while its job waits for one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bus.errors import HandlerTimeout

log = logging.getLogger(__name__)


class ThreadPool:
    """`await run(call, timeout, overran)`; `close()`. *overran* is `HandlerTimeout`'s text."""

    def __init__(self, size: int, *, name: str) -> None:
        self.size = size
        self.name = name
        self.left_behind = 0  # threads still running a handler that ran over its timeout
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, call: Callable[[], Any], timeout: float | None, overran: str) -> None:
        loop = asyncio.get_running_loop()
        pool = self._executor()
        if timeout is None:
            await loop.run_in_executor(pool, call)
            return
        started: asyncio.Future[None] = loop.create_future()

        def timed() -> Any:
            loop.call_soon_threadsafe(_set, started)
            return call()

        work = loop.run_in_executor(pool, timed)
        await asyncio.wait({started, work}, return_when=asyncio.FIRST_COMPLETED)
        try:
            async with asyncio.timeout(timeout) as scope:
                await asyncio.shield(work)
        except TimeoutError:
            if not scope.expired():  # the handler's own TimeoutError: an ordinary failure
                raise
            self._leave_behind(pool, work)
            raise HandlerTimeout(overran) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix=self.name)
        return self._pool

    def _leave_behind(self, pool: ThreadPoolExecutor, work: asyncio.Future[Any]) -> None:
        """The stuck thread keeps *pool*; the next events get a new one."""
        self.left_behind += 1
        work.add_done_callback(self._finished_late)
        if pool is self._pool:
            pool.shutdown(wait=False)  # its other threads finish their jobs, then exit
            self._pool = None
        log.warning(
            "%s: a handler ran over its timeout; its thread runs on (%d so)",
            self.name, self.left_behind,
        )  # fmt: skip

    def _finished_late(self, work: asyncio.Future[Any]) -> None:
        self.left_behind -= 1
        if not work.cancelled():
            work.exception()  # retrieved: what a handler nobody waits for raised is dropped


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
