"""A subscriber's limits on its handlers: how many run at once, how many start per second.

`Limits` is entered around each handler run when the topology sets `concurrency` below
`prefetch` or a `rate_limit`; without them dispatch never touches it. The rate is a spacing,
not a bucket: starts are at least `1/rate` seconds apart (5/s: 20 queued events start over
3.8 s), per process. The clock and the sleep are given, so `TestBus` spaces starts on its
virtual clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType


class Limits:
    """`async with limits:` around one handler run."""

    def __init__(
        self,
        concurrency: int | None,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._slots = asyncio.Semaphore(concurrency) if concurrency else None
        self._interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._clock = clock
        self._sleep = sleep

    async def __aenter__(self) -> None:
        if self._slots is not None:
            await self._slots.acquire()
        if self._interval:
            try:
                await self._pace()
            except BaseException:
                if self._slots is not None:
                    self._slots.release()
                raise

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._slots is not None:
            self._slots.release()

    async def _pace(self) -> None:
        now = self._clock()
        start = max(now, self._next)
        self._next = start + self._interval  # reserved before sleeping: callers queue up
        if start > now:
            await self._sleep(start - now)
