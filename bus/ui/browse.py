"""A DLQ read in bulk and grouped by exception type, cached so that refreshes stay cheap.

AMQP cannot look at messages without delivering them. `bus dlq` takes them one `basic.get` at
a time; a page refreshed every few seconds over 10,000 parked messages cannot. So a browse
*consumes* the DLQ (prefetch = the depth, no acks: one stream of deliveries, not 10,000 round
trips) and closes the channel, which returns every message to the queue in its order (as
`bus.ops.dlq` and `bus.ops.gauges` do). The result is kept per queue: reused while the depth is
unchanged (up to `max_age`), and never re-read more often than every `ttl` seconds whatever the
clients ask, so many open tabs cost one browse. Our own replays and purges drop it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiormq
from aio_pika.abc import AbstractConnection
from aiormq.abc import DeliveredMessage

from bus.amqp.plumbing import close_quietly, queue_counts
from bus.errors import ConfigError
from bus.ops.dlq import Parked, group_key, parked
from bus.ops.gauges import failed_at

SCAN_TIMEOUT = 30.0
MAX_AGE = 60.0
RETURN_WAIT = 2.0


def attempts_number(attempts: str) -> int | None:
    return int(attempts) if attempts.isdigit() else None


@dataclass(frozen=True, slots=True)
class Summary:
    """One parked message as a list shows it (no body, no stack trace)."""

    id: str
    type: str
    reason: str
    attempts: str
    exception_type: str
    exception_message: str
    failed_at: str

    @classmethod
    def of(cls, p: Parked) -> Summary:
        return cls(p.id, p.type, p.reason, p.attempts, p.exception_type,
                   p.exception_message[:300], p.failed_at)  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """For the JSON API: attempts is a number (None when unknown), as `bus dlq list --json`."""
        return {
            "id": self.id, "type": self.type, "reason": self.reason,
            "attempts": attempts_number(self.attempts),
            "exception_type": self.exception_type, "exception_message": self.exception_message,
            "failed_at": self.failed_at,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Group:
    """Parked messages sharing an exception type (or, broker-parked, a reason)."""

    key: str
    messages: tuple[Summary, ...]
    sample: Parked
    first_seen: str
    last_seen: str

    @property
    def count(self) -> int:
        return len(self.messages)

    def as_dict(self) -> dict[str, Any]:
        return {
            "exception_type": self.key,
            "count": self.count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "sample": Summary.of(self.sample).as_dict(),
            "messages": [m.as_dict() for m in self.messages],
        }


@dataclass(frozen=True)
class Browse:
    """A DLQ as read at one moment: its depth, what was read of it, grouped."""

    queue: str
    depth: int
    groups: tuple[Group, ...]
    browsed: int
    seconds: float
    at: float = field(default_factory=time.monotonic)

    @property
    def truncated(self) -> bool:
        return self.browsed < self.depth

    def group(self, key: str) -> Group | None:
        return next((g for g in self.groups if g.key == key), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "count": self.depth,
            "browsed": self.browsed,
            "truncated": self.truncated,
            "browse_seconds": round(self.seconds, 3),
            "groups": [g.as_dict() for g in self.groups],
        }


def _when(p: Parked) -> datetime:
    return failed_at(p.headers, None, datetime.max.replace(tzinfo=UTC))


def group(messages: list[Parked]) -> tuple[Group, ...]:
    """Messages grouped by exception type, the largest group first (pure)."""
    by_key: dict[str, list[Parked]] = {}
    for p in messages:
        by_key.setdefault(group_key(p), []).append(p)
    out = []
    for key, members in by_key.items():
        times = sorted((_when(p), p.failed_at) for p in members)
        out.append(
            Group(key, tuple(Summary.of(p) for p in members), members[0], times[0][1], times[-1][1])
        )
    return tuple(sorted(out, key=lambda g: (-g.count, g.key)))


async def depth(conn: AbstractConnection, queue: str) -> int:
    counts = await queue_counts(conn, queue)
    if counts is None:
        raise ConfigError(f"queue {queue!r} does not exist: run `bus topology apply`")
    return counts.messages


async def scan(
    conn: AbstractConnection, queue: str, limit: int, *, until_id: str | None = None
) -> tuple[int, list[Parked]]:
    """(depth, up to *limit* messages from the head), left in place; stops at *until_id*."""
    channel = await conn.channel(publisher_confirms=False)
    got: list[Parked] = []
    try:
        try:
            q = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise ConfigError(f"queue {queue!r} does not exist: run `bus topology apply`") from None
        count = int(q.declaration_result.message_count or 0)
        want = min(count, limit)
        if want == 0:
            return count, got
        done = asyncio.Event()

        async def take(m: DeliveredMessage) -> None:
            props = m.header.properties
            p = parked(props.message_id, props.message_type, props.headers, m.body)
            got.append(p)
            if len(got) >= want or (until_id is not None and p.id == until_id):
                done.set()

        raw = await channel.get_underlay_channel()
        await raw.basic_qos(prefetch_count=min(want, 65535))
        await raw.basic_consume(queue, take, no_ack=False)
        # fewer than the declaration said (another reader took some): what we have
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), SCAN_TIMEOUT)
    finally:
        await close_quietly(channel)  # every unacked delivery returns to the queue, in order
    if got:
        await returned(conn, queue, count)
    return count, got


async def returned(conn: AbstractConnection, queue: str, count: int) -> None:
    """Wait (briefly) until the queue counts the returned messages again.

    A quorum queue applies the return of a closed channel's deliveries after the close is
    confirmed: a browse, story or replay right after a browse (or a replay of a selection)
    could otherwise find the queue short of them (seen on RabbitMQ 3.10.8).
    """
    deadline = time.monotonic() + RETURN_WAIT
    while time.monotonic() < deadline:
        if await depth(conn, queue) >= count:
            return
        await asyncio.sleep(0.01)  # the broker tells nobody when it is done: poll, briefly


class BrowseCache:
    """The latest grouped browse of each DLQ; one browse at a time per queue."""

    def __init__(self, limit: int, ttl: float, max_age: float = MAX_AGE) -> None:
        self.limit, self.ttl, self.max_age = limit, ttl, max_age
        self._entries: dict[str, Browse] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, queue: str) -> asyncio.Lock:
        """Held by whatever reads or changes *queue* from this process: a message held by a
        browse is invisible to a replay's `basic.get`, so the two must not overlap."""
        return self._locks.setdefault(queue, asyncio.Lock())

    def forget(self, queue: str) -> None:
        self._entries.pop(queue, None)

    def _fresh(self, queue: str, now_depth: int) -> Browse | None:
        b = self._entries.get(queue)
        if b is None:
            return None
        age = time.monotonic() - b.at
        if age < self.ttl or (b.depth == now_depth and age < self.max_age):
            return b
        return None

    async def get(self, conn: AbstractConnection, queue: str) -> Browse:
        now_depth = await depth(conn, queue)
        if (hit := self._fresh(queue, now_depth)) is not None:
            return hit
        async with self.lock(queue):
            if (hit := self._fresh(queue, now_depth)) is not None:
                return hit  # another request browsed while this one waited
            started = time.perf_counter()
            count, messages = await scan(conn, queue, self.limit)
            b = Browse(queue, count, group(messages), len(messages),
                       time.perf_counter() - started)  # fmt: skip
            self._entries[queue] = b
            return b
