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
from typing import Any

from aio_pika.abc import AbstractConnection
from pamqp.commands import Basic

from bus.amqp.plumbing import close_quietly
from bus.envelope import H_AGAIN
from bus.history.reader import PREFETCH, Entry, read_log
from bus.history.select import Selection, routes
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
    try:
        raw = await channel.get_underlay_channel()
        window: list[asyncio.Task[Any]] = []
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        async for entry in selected(conn, topology, sub, selection):
            headers = dict(entry.event.headers)
            headers[REPLAYED_AT] = now
            if out.run:
                headers[H_AGAIN] = out.run
            # one task per copy, in order: aiormq's channel lock is first come, first served,
            # so copies reach the broker in log order while their confirms come back together
            publish = raw.basic_publish(
                entry.body,
                routing_key=sub.queue,
                properties=_copy(entry.properties, headers),
                mandatory=True,
            )
            window.append(asyncio.ensure_future(publish))
            if len(window) >= WINDOW:
                await asyncio.gather(*window)
                window.clear()
            out.per_type[entry.event.type] += 1
            if progress:
                progress(out.total, entry.event.type)
        await asyncio.gather(*window)
    except BaseException:
        for task in window:
            task.cancel()
        raise
    finally:
        await close_quietly(channel)
    return out


def _copy(p: Basic.Properties, headers: dict[str, Any]) -> Basic.Properties:
    return Basic.Properties(
        content_type=p.content_type,
        content_encoding=p.content_encoding,
        headers=headers,
        delivery_mode=2,
        correlation_id=p.correlation_id,
        message_id=p.message_id,
        timestamp=p.timestamp,
        message_type=p.message_type,
        app_id=p.app_id,
    )
