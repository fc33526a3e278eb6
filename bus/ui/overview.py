"""What the overview shows beside `bus status`: each DLQ's oldest message, the outbox, the
scheduler. Reads only; every function takes the connection it uses."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiormq
from aio_pika.abc import AbstractConnection

from bus.amqp.plumbing import close_quietly
from bus.errors import BusError, ConfigError
from bus.ops.gauges import failed_at
from bus.outbox import OutboxStore, open_outbox
from bus.scheduling.firings import describe, instant_text, next_firings
from bus.topology.model import Topology
from bus.ui.browse import returned

log = logging.getLogger(__name__)

REPEEK = 60.0  # seconds a DLQ head is remembered while the depth does not fall
NEXT_FIRINGS = 3


@dataclass(frozen=True, slots=True)
class _Head:
    depth: int
    failed_at: datetime
    peeked_at: float


class HeadAges:
    """The age of each DLQ's oldest (head) message, peeked rarely (see bus.ops.gauges)."""

    def __init__(self) -> None:
        self._heads: dict[str, _Head] = {}

    async def age(self, conn: AbstractConnection, queue: str, depth: int) -> float | None:
        if depth == 0:
            self._heads.pop(queue, None)
            return None
        head = self._heads.get(queue)
        if head is None or depth < head.depth or time.monotonic() - head.peeked_at >= REPEEK:
            stamp = await _peek(conn, queue)
            if stamp is None:
                return None
            head = self._heads[queue] = _Head(depth, stamp, time.monotonic())
        elif depth != head.depth:  # grew: the head is the same message
            head = self._heads[queue] = _Head(depth, head.failed_at, head.peeked_at)
        return max(0.0, (datetime.now(UTC) - head.failed_at).total_seconds())


async def _peek(conn: AbstractConnection, queue: str) -> datetime | None:
    channel = await conn.channel(publisher_confirms=False)
    count, stamp = 0, None
    try:
        q = await channel.declare_queue(queue, passive=True)
        count = int(q.declaration_result.message_count or 0)
        m = await q.get(no_ack=False, fail=False, timeout=5)
        stamp = None if m is None else failed_at(m.headers, m.timestamp, datetime.now(UTC))
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None
    finally:
        await close_quietly(channel)  # the head returns to the front
    if stamp is not None:
        await returned(conn, queue, count)  # before anyone counts or browses the DLQ again
    return stamp


class OutboxProbe:
    """`bus outbox status --json` for the overview, over one store kept open between refreshes
    (a PostgreSQL pool per refresh would be a connection every few seconds per open tab)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store: OutboxStore | None = None

    async def status(self) -> dict[str, Any]:
        """The status, or {"available": false, "detail": why} when there is no outbox."""
        try:
            if self._store is None:
                self._store = await open_outbox(self.url)
            return {"available": True, **(await self._store.status(sample=5)).as_dict()}
        except BusError as exc:  # no table yet, or unreachable: our messages redact URLs
            await self.close()
            return {"available": False, "detail": str(exc)}
        except Exception as exc:  # a driver's error text is not ours to show
            await self.close()
            return {"available": False, "detail": type(exc).__name__}

    async def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                await store.close()


async def _lock_held(conn: AbstractConnection, lock_queue: str) -> bool:
    channel = await conn.channel(publisher_confirms=False)
    try:
        await channel.declare_queue(lock_queue, passive=True)
        return True  # declared by this very connection: never, but held all the same
    except aiormq.exceptions.ChannelLockedResource:
        return True  # exclusive to another connection: the leader's
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        await close_quietly(channel)


async def _record(conn: AbstractConnection, state_queue: str) -> dict[str, Any]:
    channel = await conn.channel(publisher_confirms=False)
    try:
        q = await channel.declare_queue(state_queue, passive=True)
        m = await q.get(no_ack=False, fail=False, timeout=5)
        if m is None:
            return {}
        raw = json.loads(m.body)
        return raw if isinstance(raw, dict) else {}
    except aiormq.exceptions.ChannelNotFoundEntity:
        return {}
    except ValueError:
        log.warning("ignoring an unreadable record in %s", state_queue)
        return {}
    finally:
        await close_quietly(channel)  # the record stays


async def scheduler_status(
    conn: AbstractConnection, topology: Topology, lock_queue: str
) -> dict[str, Any]:
    """The leader (held lock, and who last wrote the record) and each schedule's next firings."""
    schedules = topology.schedules()
    if not schedules:
        return {"lock_queue": lock_queue, "leader": None, "schedules": []}
    held = await _lock_held(conn, lock_queue)
    record = await _record(conn, f"{lock_queue}.state")
    fired = record.get("last_fired")
    last: dict[str, Any] = fired if isinstance(fired, dict) else {}
    now = datetime.now(UTC)
    rows = []
    for s in schedules:
        try:
            upcoming = [instant_text(at) for at in next_firings(s, now, NEXT_FIRINGS)]
        except ValueError as exc:
            raise ConfigError(f"schedules.{s.name}: {exc}") from None
        rows.append({"name": s.name, "event": s.event, "when": describe(s),
                     "last_fired": last.get(s.name), "next": upcoming})  # fmt: skip
    leader = {"held": held, "last_leader": record.get("leader"),
              "recorded_at": record.get("written_at")}  # fmt: skip
    return {"lock_queue": lock_queue, "leader": leader, "schedules": rows}
