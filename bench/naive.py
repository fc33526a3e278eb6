"""The naive side: what a user writes from aio-pika's documentation, without tuning anything.

Publishing: an `aio_pika.Message` per event, `asyncio.gather` of `exchange.publish` in windows
of W (the next window starts once the whole previous one is confirmed), on a confirm channel
(aio-pika's defaults: `publisher_confirms=True`, `mandatory=True`), persistent. With
`envelope=True` each message carries the bus's wire format (id, type, source, timestamp,
CloudEvents headers, traceparent: the comparison the targets use); with `envelope=False` it is
a bare message (body and delivery mode only).

Consuming: `queue.consume(callback)` at the same prefetch; the callback runs `json.loads`, the
pydantic model's `model_validate`, the handler, and one `message.ack()`; with a store, one
`INSERT OR IGNORE` and commit per message before the handler (`RawSqlite`).

The tuned raw side (`bench.common.RawPublisher`, `bench.consumers.raw_consuming`) is what a
careful developer writes; this one is what most people write first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection
from pydantic import BaseModel

from bench.common import hand_made_envelope
from bench.consumers import OnEvent, RawSqlite


def message(routing_key: str, data: Any, *, envelope: bool) -> aio_pika.Message:
    """One event as an `aio_pika.Message`, the docs' way (`json.dumps(...).encode()`)."""
    body = json.dumps(data).encode()
    if not envelope:
        return aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    event_id, now, headers = hand_made_envelope(routing_key)
    return aio_pika.Message(
        body,
        message_id=event_id,
        type=routing_key,
        app_id="bench",
        timestamp=now,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=headers,
    )


class NaivePublisher:
    """`exchange.publish` awaited one by one, or gathered in windows."""

    def __init__(self, url: str, exchange: str, *, envelope: bool = True) -> None:
        self.url = url
        self.exchange_name = exchange
        self.envelope = envelope
        self.connection: AbstractRobustConnection | None = None
        self.exchange: AbstractExchange | None = None

    async def __aenter__(self) -> NaivePublisher:
        self.connection = await aio_pika.connect_robust(self.url)
        channel = await self.connection.channel()  # publisher confirms: aio-pika's default
        self.exchange = await channel.get_exchange(self.exchange_name, ensure=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.connection is not None:
            await self.connection.close()

    async def publish(self, routing_key: str, data: Any) -> None:
        assert self.exchange is not None
        await self.exchange.publish(
            message(routing_key, data, envelope=self.envelope), routing_key=routing_key
        )

    async def publish_window(self, routing_key: str, items: Sequence[Any], window: int) -> None:
        """Windows of *window* messages, each gathered until all of it is confirmed."""
        assert self.exchange is not None
        exchange = self.exchange
        for start in range(0, len(items), window):
            await asyncio.gather(
                *(
                    exchange.publish(message(routing_key, d, envelope=self.envelope), routing_key)
                    for d in items[start : start + window]
                )
            )


@contextlib.asynccontextmanager
async def naive_consuming(
    url: str,
    queue: str,
    model: type[BaseModel],
    on_event: OnEvent,
    *,
    prefetch: int,
    store: RawSqlite | None = None,
) -> AsyncIterator[None]:
    """Consume *queue*: json.loads, `model_validate`, (dedupe), the handler, one ack."""
    conn = await aio_pika.connect_robust(url)
    try:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=prefetch)
        q = await channel.get_queue(queue, ensure=False)

        async def on_message(m: AbstractIncomingMessage) -> None:
            event = model.model_validate(json.loads(m.body))
            if store is None or await store.first_time(m.message_id or ""):
                await on_event(event)
            await m.ack()

        tag = await q.consume(on_message)
        yield
        await q.cancel(tag)
    finally:
        await conn.close()
