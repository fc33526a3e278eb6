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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import aiormq
from aio_pika.abc import AbstractConnection
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from bus.amqp.connection import connect_plain
from bus.amqp.plumbing import close_quietly
from bus.errors import NoHistory
from bus.history.event import MARKER, HistoryEvent, decode
from bus.history.select import Selection, parse_when
from bus.settings import Settings
from bus.topology.model import history_stream

PREFETCH = 1000


@dataclass(frozen=True, slots=True)
class Entry:
    """One event of the log with the message it came in (a replay copies the message)."""

    event: HistoryEvent
    body: bytes
    properties: Basic.Properties


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
        self._conn = await connect_plain(self.url, "history")
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
        async for entry in self.entries(exchange, selection):
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
) -> AsyncIterator[Entry]:
    """The selected entries of *exchange*'s log, oldest first, up to a marker appended first."""
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
        async for entry in _consume(raw, stream, selection, token, prefetch):
            yield entry
    finally:
        await close_quietly(channel)


async def _consume(
    raw: aiormq.abc.AbstractChannel,
    stream: str,
    selection: Selection,
    token: str,
    prefetch: int,
) -> AsyncIterator[Entry]:
    # The broker sends at most `prefetch` unacked messages: this queue stays that small, and
    # memory stays flat however long the log. Acks go out in batches (`multiple`).
    inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
    await raw.basic_qos(prefetch_count=prefetch)
    start = selection.start()
    offset: Any = "first" if start is None else start.replace(microsecond=0)
    ok = await raw.basic_consume(
        stream, inbox.put, no_ack=False, arguments={"x-stream-offset": offset}
    )
    unacked = 0
    try:
        while True:
            m = await inbox.get()
            p = m.header.properties
            headers = p.headers or {}
            if headers.get(MARKER) == token:
                return
            unacked += 1
            if unacked >= prefetch // 2:
                await raw.basic_ack(m.delivery_tag or 0, multiple=True)
                unacked = 0
            event = decode(
                body=m.body, message_id=p.message_id, type_=p.message_type, app_id=p.app_id,
                timestamp=p.timestamp, correlation_id=p.correlation_id, headers=headers,
            )  # fmt: skip
            if event is None or not selection.takes(
                event.type, event.time, event.id, event.correlation_id
            ):
                continue
            yield Entry(event, m.body, p)
    finally:
        if ok.consumer_tag and not raw.is_closed:
            with contextlib.suppress(Exception):
                await raw.basic_cancel(ok.consumer_tag)
