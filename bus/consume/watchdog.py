"""Warn before RabbitMQ's `consumer_timeout` closes the channel under a long handler.

For a subscriber that declares no `timeout`: every `interval` seconds the watchdog looks at
which deliveries are still in their handlers (`Acker.running`, state the acks keep anyway, so
the consume path does no extra work per message) and warns once for each that has been
running past half of `consumer_timeout`. At the whole of it the broker closes the channel and
redelivers the message, and the work starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from bus.durations import label

log = logging.getLogger(__name__)


class Watchdog:
    """`start()` / `await stop()`; *running* returns the keys of deliveries still running."""

    def __init__(
        self, subscriber: str, consumer_timeout: float, running: Callable[[], set[tuple[int, int]]]
    ) -> None:
        self.subscriber = subscriber
        self.consumer_timeout = consumer_timeout
        self.threshold = consumer_timeout / 2
        self.interval = min(60.0, self.threshold / 20)
        self._running = running
        self._first_seen: dict[tuple[int, int], float] = {}
        self._warned: set[tuple[int, int]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def check(self, now: float) -> int:
        """One look at *now*; returns how many deliveries it warned about."""
        running = self._running()
        self._first_seen = {k: self._first_seen.get(k, now) for k in running}
        self._warned &= running
        late = [k for k, t in self._first_seen.items() if now - t >= self.threshold]
        fresh = [k for k in late if k not in self._warned]
        for key in fresh:
            self._warned.add(key)
            log.warning(
                "subscriber %s: a handler has run for over %s, half of the broker's "
                "consumer_timeout (%s), and %s declares no `timeout`: at %s RabbitMQ closes "
                "the channel and redelivers the message. Declare a `timeout` below it, or "
                "raise consumer_timeout (BUS_CONSUMER_TIMEOUT tells the bus)",
                self.subscriber, _human(self.threshold), _human(self.consumer_timeout),
                self.subscriber, _human(self.consumer_timeout),
                extra={"subscriber": self.subscriber, "delivery_tag": key[1]},
            )  # fmt: skip
        return len(fresh)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            self.check(loop.time())


def _human(seconds: float) -> str:
    ms = int(seconds * 1000)
    return label(ms) if ms > 0 else "0s"
