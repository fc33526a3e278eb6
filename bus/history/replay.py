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
from collections import Counter, deque
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
from bus.history.reader import PREFETCH, Entry, read_batches
from bus.history.select import Selection, routes
from bus.metrics import Metrics
from bus.produce.confirms import ConfirmWriter
from bus.topology.model import Subscriber, Topology

REPLAYED_AT = "bus-replayed-at"
WINDOW = 2000  # unconfirmed copies in flight
WRITE = 250  # copies written together

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
) -> AsyncIterator[list[Entry]]:
    """The events of every log *sub* is bound to that reach its queue and pass *selection*,
    log by log, each in log order, in the batches they were read in."""
    exchanges = list(dict.fromkeys(b.exchange for b in sub.bindings))
    for exchange in exchanges:
        kind = topology.exchanges[exchange].type
        keys = [b.key for b in sub.bindings if b.exchange == exchange]
        reaches: dict[str, bool] = {}  # per event type: a log holds few types, many events
        async for batch in read_batches(conn, exchange, selection, PREFETCH):
            taken = []
            for entry in batch:
                ok = reaches.get(entry.type)
                if ok is None:
                    ok = reaches[entry.type] = routes(kind, keys, entry.type)
                if ok:
                    taken.append(entry)
            if taken:
                yield taken


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
    """Copy the selected events into *sub*'s queue with confirms, in log order.

    Copies are written as they are read, `WRITE` at a time, up to `WINDOW` of them
    unconfirmed: the oldest confirm is awaited only when the window is full, so reading,
    writing and the broker's confirms overlap. Returns once every copy is confirmed; a nack or
    a return raises PublishError."""
    out = Outcome(run=str(uuid.uuid4()) if again else None)
    if dry_run:
        async for batch in selected(conn, topology, sub, selection):
            for entry in batch:
                out.per_type[entry.type] += 1
            if progress:
                progress(out.total, batch[-1].type)
        return out
    channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
    try:
        raw = cast(aiormq.Channel, await channel.get_underlay_channel())
        copier = _Copier(raw, sub.queue)
        now = datetime.now(UTC)
        stamp = now.isoformat().replace("+00:00", "Z")
        extra = {REPLAYED_AT: stamp, **({H_AGAIN: out.run} if out.run else {})}
        try:
            async for batch in selected(conn, topology, sub, selection):
                for entry in batch:
                    copier.copies.append(_wire(entry, {**entry.headers, **extra}, now))
                    out.per_type[entry.type] += 1
                if len(copier.copies) >= WRITE:
                    await copier.write(WINDOW)
                if progress:
                    progress(out.total, batch[-1].type)
            await copier.write(0)
        finally:
            copier.forget()
    finally:
        await close_quietly(channel)
        counter = (metrics or Metrics.default()).replayed
        for etype, n in out.per_type.items():
            counter.labels(sub.name, etype).inc(n)
    return out


class _Copier:
    """Copies waiting to be written, and the window of written ones waiting for a confirm."""

    def __init__(self, raw: aiormq.Channel, queue: str) -> None:
        self.raw, self.queue = raw, queue
        self.writer = ConfirmWriter()
        self.copies: list[Wire] = []
        self.window: deque[tuple[asyncio.Future[object], str, int]] = deque()

    async def write(self, keep: int) -> None:
        """Write the waiting copies, then wait until at most *keep* are unconfirmed; a nack
        or a return raises PublishError."""
        # started together, written together (one frame of bytes, one system call), in
        # order: the copies reach the broker in log order, their confirms come back together
        for wire in self.copies:
            future, tag = self.writer.start(self.raw, wire, "", self.queue)
            self.window.append((future, wire.message_id, tag))
        self.copies.clear()
        while len(self.window) > keep:
            future, message_id, tag = self.window.popleft()
            try:
                result = await future
            finally:
                ConfirmWriter.forget(self.raw, message_id, tag)
            if isinstance(result, Basic.Nack):
                raise PublishError(f"the broker refused a replayed copy ({result!r})")

    def forget(self) -> None:
        """Drop what aiormq keeps of copies left unconfirmed (after a failure)."""
        for _, message_id, tag in self.window:
            ConfirmWriter.forget(self.raw, message_id, tag)
        self.window.clear()


def _wire(entry: Entry, headers: dict[str, Any], now: datetime) -> Wire:
    p = entry.properties
    return Wire(
        body=entry.body,
        message_id=p.message_id or entry.id,
        type=p.message_type or entry.type,
        app_id=p.app_id or "",
        timestamp=p.timestamp or entry.time or now,
        headers=headers,
        correlation_id=p.correlation_id,
        content_type=p.content_type or "application/json",
    )
