"""The FastStream side (optional extra `bench`): the same work as raw aio-pika, FastStream's way.

Only used when `faststream[rabbit]` is installed. Like the raw side: publisher confirms,
`mandatory` (a returned message raises), persistent, the bus's wire format (id, type, source,
timestamp, CloudEvents headers, traceparent); consumers validate into the same pydantic model
and ack after the handler (FastStream's default policy), at the same prefetch, on the queues the
benchmark declared (`declare=False`: FastStream would re-declare them as classic queues).
FastStream logs two lines per message by default; `logger=None` keeps that out of the numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from bench.common import Windowed, hand_made_envelope
from bench.consumers import OnEvent

try:
    from faststream.rabbit import Channel, ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

    AVAILABLE = True
except ImportError:  # pragma: no cover - the extra is optional
    AVAILABLE = False


def version() -> str | None:
    if not AVAILABLE:
        return None
    from importlib.metadata import version as dist_version

    return dist_version("faststream")


def _broker(url: str, **kw: Any) -> Any:
    return RabbitBroker(url, logger=None, app_id="bench", **kw)


class FsPublisher(Windowed):
    """`RabbitBroker.publish` on its default confirm channel, `on_return_raises`."""

    def __init__(self, url: str, exchange: str) -> None:
        self.broker = _broker(url, default_channel=Channel(on_return_raises=True))
        self.exchange = RabbitExchange(exchange, type=ExchangeType.TOPIC, declare=False)

    async def __aenter__(self) -> FsPublisher:
        await self.broker.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.broker.stop()

    async def publish(self, routing_key: str, data: Any) -> None:
        event_id, now, headers = hand_made_envelope(routing_key)
        await self.broker.publish(
            data,
            exchange=self.exchange,
            routing_key=routing_key,
            mandatory=True,
            persist=True,
            message_id=event_id,
            message_type=routing_key,
            timestamp=now,
            headers=headers,
        )


@contextlib.asynccontextmanager
async def fs_consuming(
    url: str, queue: str, model: type[BaseModel], on_event: OnEvent, *, prefetch: int
) -> AsyncIterator[None]:
    """A FastStream subscriber on *queue* whose handler takes *model* (validated by FastStream)."""
    broker = _broker(url)

    async def handle(event: Any) -> None:
        await on_event(event)

    handle.__annotations__ = {"event": model, "return": None}
    broker.subscriber(RabbitQueue(queue, declare=False), channel=Channel(prefetch_count=prefetch))(
        handle
    )
    await broker.start()
    try:
        yield
    finally:
        await broker.stop()
