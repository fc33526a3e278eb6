"""Read an exchange's log from a stream queue over AMQP 0.9.1 (no plugin needed).

A stream consumer must set a prefetch and ack manually (acks are credit, nothing is removed);
`x-stream-offset` says where to start: the beginning, or a timestamp. The broker keeps no offset
for a 0.9.1 reader and says nothing when the end is reached, so before reading, the reader
appends a marker of its own to the log (a confirmed publish straight to the stream): every
event stored before it is read, and reading stops at it. No wait on a timeout, and events
published while the read goes on are not read. Markers are skipped by every reader.

Streams store AMQP 1.0 messages: the 0.9.1 properties and scalar headers of an event survive,
array and table headers do not (the bus writes none that matter here).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import aiormq
from aio_pika.abc import AbstractConnection
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from bus.amqp.connection import connect_plain
from bus.amqp.plumbing import close_quietly
from bus.amqp.reader import INLINE
from bus.envelope import H_TIME, header_text, header_time
from bus.errors import NoHistory
from bus.history.event import MARKER, OFFSET, HistoryEvent, decode, peek
from bus.history.select import Selection, parse_when
from bus.settings import Settings
from bus.topology.history import history_stream

PREFETCH = 2000  # deliveries in flight from the stream; acked (as credit) by halves


class Entry:
    """One event of the log with the message it came in (a replay copies the message). Its
    `event` (the body decoded) is built on first use: a replay's filter and copy never need it."""

    __slots__ = ("_event", "body", "correlation_id", "headers", "id", "offset", "properties",
                 "type")  # fmt: skip

    def __init__(
        self, body: bytes, properties: Basic.Properties, headers: dict[str, Any], id: str,
        type: str, offset: int,
    ) -> None:  # fmt: skip
        self.body, self.properties, self.headers = body, properties, headers
        self.id, self.type, self.offset = id, type, offset
        self.correlation_id = header_text(properties.correlation_id)
        self._event: HistoryEvent | None = None

    @property
    def time(self) -> datetime | None:
        p = self.properties
        return header_time(self.headers.get(H_TIME), p.timestamp)

    @property
    def event(self) -> HistoryEvent:
        if self._event is None:
            p = self.properties
            event = decode(
                body=self.body, message_id=p.message_id, type_=p.message_type, app_id=p.app_id,
                timestamp=p.timestamp, correlation_id=p.correlation_id,
                headers={**self.headers, OFFSET: self.offset},
            )  # fmt: skip
            assert event is not None  # an Entry is made only of what peek() took for an event
            self._event = event
        return self._event


class History:
    """Read access to the logs of a broker: `async with History.from_env() as h:`."""

    def __init__(self, url: str, *, prefetch: int = PREFETCH) -> None:
        self.url = url
        self.prefetch = prefetch
        self._conn: AbstractConnection | None = None

    @classmethod
    def from_env(cls, url: str | None = None) -> History:
        s = Settings.from_env()
        return cls(url or s.url)

    async def __aenter__(self) -> History:
        self._conn = await connect_plain(self.url, "history", frames=True)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    @property
    def connection(self) -> AbstractConnection:
        if self._conn is None:
            raise RuntimeError("use `async with History(...)`")
        return self._conn

    async def read(
        self,
        exchange: str,
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        types: Sequence[str] = (),
        id: str | None = None,
        correlation_id: str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[HistoryEvent]:
        """The events of *exchange*'s log that pass every filter, oldest first, up to the end
        of the log as it was when the read began."""
        selection = Selection(
            since=parse_when(since) if isinstance(since, str) else since,
            until=parse_when(until) if isinstance(until, str) else until,
            types=tuple(types),
            id=id,
            correlation_id=correlation_id,
        )
        n = 0
        entries = read_log(self.connection, exchange, selection, self.prefetch)
        async with contextlib.aclosing(entries):  # a limit reached: stop reading at once
            async for entry in entries:
                yield entry.event
                n += 1
                if limit is not None and n >= limit:
                    return

    async def entries(self, exchange: str, selection: Selection) -> AsyncIterator[Entry]:
        """Like `read`, with each event's message."""
        async for entry in read_log(self.connection, exchange, selection, self.prefetch):
            yield entry


async def read_log(
    conn: AbstractConnection, exchange: str, selection: Selection, prefetch: int = PREFETCH
) -> AsyncGenerator[Entry, None]:
    """The selected entries of *exchange*'s log, oldest first, up to a marker appended first."""
    async for batch in read_batches(conn, exchange, selection, prefetch):
        for entry in batch:
            yield entry


async def read_batches(
    conn: AbstractConnection, exchange: str, selection: Selection, prefetch: int = PREFETCH
) -> AsyncGenerator[list[Entry], None]:
    """`read_log` by the batch: the selected entries of the deliveries that arrived together."""
    stream = history_stream(exchange)
    channel = await conn.channel(publisher_confirms=True)
    try:
        raw = await channel.get_underlay_channel()
        try:
            await raw.queue_declare(stream, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise NoHistory(
                f"exchange {exchange!r} keeps no history: its log {stream!r} does not exist "
                "(add `history:` to the exchange and run `bus topology apply`)"
            ) from None
        token = str(uuid.uuid4())
        await raw.basic_publish(
            b"",
            routing_key=stream,
            properties=Basic.Properties(headers={MARKER: token}, message_id=token, delivery_mode=2),
        )
        async for batch in _consume(raw, stream, selection, token, prefetch):
            yield batch
    finally:
        await close_quietly(channel)


class _Inbox:
    """Deliveries as they arrive, taken all at once by the reading loop."""

    def __init__(self) -> None:
        self.items: list[DeliveredMessage] = []
        self.ready = asyncio.Event()

    def put(self, message: DeliveredMessage) -> None:
        self.items.append(message)
        self.ready.set()

    async def put_async(self, message: DeliveredMessage) -> None:
        self.put(message)

    async def take(self) -> list[DeliveredMessage]:
        while not self.items:
            self.ready.clear()
            await self.ready.wait()
        items, self.items = self.items, []
        return items


def _deliver_inline(raw: aiormq.abc.AbstractChannel, tag: str, inbox: _Inbox) -> None:
    """Hand this channel's deliveries (it carries this one consumer) to *inbox* where they are
    read, instead of in a task per delivery (a fifth of a read's CPU), on both of its paths:
    the bus's frame reader takes one off the wire while the channel is idle (its `INLINE` map),
    aiormq's channel reads one queued to it (`_on_deliver_frame`, with aiormq 7's name-mangled
    `__get_content_header`). Both or neither: a delivery handed over in place must not overtake
    an earlier one still waiting in a task. Where aiormq's names are missing, the consumer
    callback (a task each, in order) does the same job."""
    get_header = getattr(raw, "_Channel__get_content_header", None)
    read_content = getattr(raw, "_read_content", None)
    if get_header is None or read_content is None or not hasattr(raw, "_on_deliver_frame"):
        return

    async def on_deliver(frame: Basic.Deliver) -> None:
        inbox.put(await read_content(frame, await get_header()))

    raw._on_deliver_frame = on_deliver
    setattr(raw, INLINE, {tag: inbox.put})


async def _consume(
    raw: aiormq.abc.AbstractChannel,
    stream: str,
    selection: Selection,
    token: str,
    prefetch: int,
) -> AsyncIterator[list[Entry]]:
    # The broker sends at most `prefetch` unacked messages: the inbox stays that small, and
    # memory stays flat however long the log. Acks go out in batches (`multiple`).
    inbox = _Inbox()
    tag = f"bus-history-{uuid.uuid4().hex}"
    _deliver_inline(raw, tag, inbox)
    await raw.basic_qos(prefetch_count=prefetch)
    start = selection.start()
    offset: Any = "first" if start is None else start.replace(microsecond=0)
    ok = await raw.basic_consume(
        stream, inbox.put_async, no_ack=False, arguments={"x-stream-offset": offset},
        consumer_tag=tag,
    )  # fmt: skip
    timed = selection.since is not None or selection.until is not None
    unacked = 0
    try:
        while True:
            batch: list[Entry] = []
            for m in await inbox.take():
                p = m.header.properties
                headers = p.headers or {}
                if headers.get(MARKER) == token:
                    if batch:
                        yield batch
                    return
                unacked += 1
                if unacked >= prefetch // 2:
                    await raw.basic_ack(m.delivery_tag or 0, multiple=True)
                    unacked = 0
                found = peek(p.message_id, p.message_type, headers)
                if found is None:
                    continue
                offset = headers.pop(OFFSET, -1)
                entry = Entry(m.body, p, headers, found[0], found[1],
                              offset if isinstance(offset, int) else -1)  # fmt: skip
                if selection.takes(
                    entry.type, entry.time if timed else None, entry.id, entry.correlation_id
                ):
                    batch.append(entry)
            if batch:
                yield batch
    finally:
        if ok.consumer_tag and not raw.is_closed:
            with contextlib.suppress(Exception):
                await raw.basic_cancel(ok.consumer_tag)
