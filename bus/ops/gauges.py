"""Queue gauges for one subscriber, refreshed every few seconds over AMQP alone.

`bus_queue_messages{queue}` for `Q`, each `Q.retry.<delay>` and `Q.dlq` comes from passive
declarations (ready messages, unacked ones excluded). `bus_dlq_oldest_message_age_seconds`
is the age of the DLQ's head message: its `bus-failed-at` header, else the broker's `x-death`
time (a message parked by the quorum delivery limit), else its AMQP timestamp, else the time
we first saw it.

AMQP 0-9-1 cannot look at a message without delivering it, so the head is *peeked*:
`basic.get` without an ack, then the channel is closed, which returns the message to the head
(as `bus.ops.dlq` browses). Not `basic.nack(requeue=True)`: on RabbitMQ 3.10.8 that puts a quorum
queue's message at the *tail*, which would rotate the DLQ and make every peek see another
message (checked; a classic queue keeps the position either way). On a quorum queue every peek
adds one to the message's delivery count (`x-delivery-count`). That is harmless for `Q.dlq`,
which the topology declares without `x-delivery-limit`; a DLQ under a delivery limit (a policy,
or RabbitMQ 4's default of 20) would eventually drop its head, so peeks are kept rare: only when
the DLQ is non-empty, and then only when its depth fell (the head may have been replayed or
purged) or the last peek is older than `repeek` seconds. Between peeks the age is computed from
the remembered head.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from aio_pika.abc import AbstractConnection
from prometheus_client import Gauge

from bus.amqp.connection import connect_plain
from bus.amqp.plumbing import close_quietly
from bus.envelope import header_time
from bus.metrics import Metrics
from bus.ops.status import QueueState, queue_state
from bus.topology.model import Subscriber

log = logging.getLogger(__name__)

FAILED_AT = "bus-failed-at"  # written by bus.retry.failure_headers

DEFAULT_INTERVAL = 5.0
DEFAULT_REPEEK = 60.0


@dataclass(frozen=True, slots=True)
class _Head:
    """What a peek learnt about the DLQ's head: when it failed, and when we looked."""

    failed_at: datetime
    peeked_at: float  # time.monotonic()


def failed_at(
    headers: Mapping[str, Any] | None, timestamp: datetime | None, seen: datetime
) -> datetime:
    """When a parked message failed: `bus-failed-at`, else `x-death` time, else its AMQP
    timestamp, else *seen* (the moment we first saw it). Always timezone-aware."""
    h = headers or {}
    stamp = header_time(h.get(FAILED_AT))
    if stamp is None:
        deaths = h.get("x-death")
        if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
            stamp = header_time(deaths[0].get("time"))
    return stamp or header_time(timestamp) or seen


class QueueGauges:
    """Refreshes one subscriber's queue gauges every *interval* seconds until stopped.

    `await g.start()` / `await g.stop()`, or `async with QueueGauges(...)`. While the broker
    is away the gauges keep their last values and the task keeps trying.
    """

    def __init__(
        self,
        sub: Subscriber,
        url: str,
        metrics: Metrics,
        *,
        interval: float = DEFAULT_INTERVAL,
        repeek: float = DEFAULT_REPEEK,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sub = sub
        self.url = url
        self.metrics = metrics
        self.interval = interval
        self.repeek = repeek
        self._now = now
        self._conn: AbstractConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._head: _Head | None = None
        self._dlq_depth = 0

    @property
    def queues(self) -> tuple[str, ...]:
        return (self.sub.queue, *self.sub.retry_queues, self.sub.dlq)

    async def start(self) -> Self:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"bus-gauges:{self.sub.name}")
        return self

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._disconnect()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.refresh(), timeout=max(self.interval, 10.0))
            except Exception as exc:  # the broker is away: keep the last values, try again
                log.debug("refreshing queue gauges of %s failed: %r", self.sub.name, exc)
                await self._disconnect()
            await asyncio.sleep(self.interval)

    async def refresh(self) -> None:
        """One pass over the subscriber's queues. Raises when the broker cannot be reached."""
        conn = await self._connection()
        for name in self.queues:
            state = await queue_state(conn, name)
            if state.exists:
                self.metrics.queue_messages.labels(name).set(state.ready)
            else:
                _forget(self.metrics.queue_messages, name)
            if name == self.sub.dlq:
                await self._refresh_dlq_age(conn, state)

    async def _refresh_dlq_age(self, conn: AbstractConnection, state: QueueState) -> None:
        gauge, depth = self.metrics.dlq_oldest_age, state.ready
        if not state.exists or depth == 0:
            self._head = None
            if state.exists:
                gauge.labels(state.name).set(0)
            else:
                _forget(gauge, state.name)
        else:
            head = self._head
            fell = depth < self._dlq_depth  # the head may have been replayed or purged
            if fell or head is None or time.monotonic() - head.peeked_at >= self.repeek:
                head = self._head = await self._peek(conn, state.name)
            if head is not None:
                age = (self._now() - head.failed_at).total_seconds()
                gauge.labels(state.name).set(max(0.0, age))
        self._dlq_depth = depth  # only once the peek succeeded: a failed one is retried

    async def _peek(self, conn: AbstractConnection, name: str) -> _Head | None:
        """Read the head of *name* and put it back: `basic.get`, no ack, close the channel."""
        channel = await conn.channel(publisher_confirms=False)
        try:
            queue = await channel.declare_queue(name, passive=True)
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            if message is None:  # emptied since the declaration
                return None
            return _Head(
                failed_at(message.headers, message.timestamp, self._now()), time.monotonic()
            )
        finally:
            await close_quietly(channel)  # returns the unacked head to the front of the queue

    async def _connection(self) -> AbstractConnection:
        if self._conn is None or self._conn.is_closed:
            self._conn = await connect_plain(self.url, f"gauges:{self.sub.name}", timeout=5.0)
        return self._conn

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await close_quietly(conn)


def _forget(gauge: Gauge, label: str) -> None:
    """Drop a series for a queue that no longer exists, rather than report a stale value."""
    with contextlib.suppress(KeyError):
        gauge.remove(label)
