"""Copy events of the logs into one subscriber's own queue: `bus replay` and backfill.

Each copy goes through the default exchange with the subscriber's queue as routing key, so no
other queue and no log sees it again; `mandatory` and confirms make a copy either land or fail
loudly. Copies keep the event's id, type and headers and add `bus-replayed-at`; the queue's own
processed table absorbs what the subscriber already handled, unless the run is `--again`, whose
copies carry `bus-replay-again` (the subscriber handles each once more, once per run). A run
that is interrupted and started again copies some events twice: absorbed the same way.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractConnection
from pamqp.commands import Basic

from bus.amqp.plumbing import close_quietly
from bus.envelope import H_AGAIN, Wire
from bus.errors import PublishError
from bus.history.reader import PREFETCH, Entry, read_log
from bus.history.select import Selection, routes
from bus.metrics import Metrics
from bus.produce.confirms import ConfirmWriter
from bus.topology.model import Subscriber, Topology

REPLAYED_AT = "bus-replayed-at"
WINDOW = 2000  # unconfirmed copies in flight

Progress = Callable[[int, str], None]  # (copies so far, type of the last one)


@dataclass
class Outcome:
    """What a replay copied (or, dry, would copy), per event type."""

    per_type: Counter[str] = field(default_factory=Counter)
    run: str | None = None  # the `--again` run id

    @property
    def total(self) -> int:
        return sum(self.per_type.values())


async def selected(
    conn: AbstractConnection, topology: Topology, sub: Subscriber, selection: Selection
) -> AsyncIterator[Entry]:
    """The events of every log *sub* is bound to that reach its queue and pass *selection*,
    log by log, each in log order."""
    exchanges = list(dict.fromkeys(b.exchange for b in sub.bindings))
    for exchange in exchanges:
        kind = topology.exchanges[exchange].type
        keys = [b.key for b in sub.bindings if b.exchange == exchange]
        async for entry in read_log(conn, exchange, selection, PREFETCH):
            if routes(kind, keys, entry.event.type):
                yield entry


async def replay(
    conn: AbstractConnection,
    topology: Topology,
    sub: Subscriber,
    selection: Selection,
    *,
    dry_run: bool = False,
    again: bool = False,
    progress: Progress | None = None,
    metrics: Metrics | None = None,
) -> Outcome:
    """Copy the selected events into *sub*'s queue with confirms, in log order."""
    out = Outcome(run=str(uuid.uuid4()) if again else None)
    if dry_run:
        async for entry in selected(conn, topology, sub, selection):
            out.per_type[entry.event.type] += 1
            if progress:
                progress(out.total, entry.event.type)
        return out
    channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
    writer = ConfirmWriter()
    window: list[tuple[asyncio.Future[object], str, int]] = []
    try:
        raw = cast(aiormq.Channel, await channel.get_underlay_channel())
        now = datetime.now(UTC)
        stamp = now.isoformat().replace("+00:00", "Z")
        async for entry in selected(conn, topology, sub, selection):
            headers = dict(entry.event.headers)
            headers[REPLAYED_AT] = stamp
            if out.run:
                headers[H_AGAIN] = out.run
            wire = _wire(entry, headers, now)
            # buffered and written once per loop turn, in order: copies reach the broker in
            # log order while their confirms come back together
            future, tag = writer.start(raw, wire, "", sub.queue)
            window.append((future, wire.message_id, tag))
            if len(window) >= WINDOW:
                await _settle(raw, window)
            out.per_type[entry.event.type] += 1
            if progress:
                progress(out.total, entry.event.type)
        await _settle(raw, window)
    finally:
        await close_quietly(channel)
        counter = (metrics or Metrics.default()).replayed
        for etype, n in out.per_type.items():
            counter.labels(sub.name, etype).inc(n)
    return out


async def _settle(
    raw: aiormq.Channel, window: list[tuple[asyncio.Future[object], str, int]]
) -> None:
    """Wait for every confirm of *window* (then empty it); a nack or a return raises."""
    try:
        for future, _, _ in window:
            result = await future
            if isinstance(result, Basic.Nack):
                raise PublishError(f"the broker refused a replayed copy ({result!r})")
    finally:
        for _, message_id, tag in window:
            ConfirmWriter.forget(raw, message_id, tag)
        window.clear()


def _wire(entry: Entry, headers: dict[str, Any], now: datetime) -> Wire:
    p = entry.properties
    return Wire(
        body=entry.body,
        message_id=p.message_id or entry.event.id,
        type=p.message_type or entry.event.type,
        app_id=p.app_id or "",
        timestamp=p.timestamp or entry.event.time or now,
        headers=headers,
        correlation_id=p.correlation_id,
        content_type=p.content_type or "application/json",
    )
