"""Republish a delivery to a retry queue or the DLQ: confirmed, `mandatory`, body intact."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bus.delivery import Delivery, copy_properties

HANDOFF_TIMEOUT = 30.0


def copy_of(m: AbstractIncomingMessage, headers: Mapping[str, Any]) -> aio_pika.Message:
    """*m* with new headers: same body, id, type, timestamps; persistent; no per-message TTL."""
    return aio_pika.Message(
        m.body,
        headers=dict(headers),
        content_type=m.content_type,
        content_encoding=m.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=m.priority,
        correlation_id=m.correlation_id,
        reply_to=m.reply_to,
        message_id=m.message_id,
        timestamp=m.timestamp,
        type=m.type,
        app_id=m.app_id,
    )


class HandOff:
    """Publishes copies through the default exchange (routing key = queue name) on a confirm
    channel with `on_return_raises`, so an unroutable copy raises instead of vanishing."""

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self._locks: dict[str, asyncio.Lock] = {}

    async def republish(self, m: Delivery, queue: str, headers: dict[str, Any]) -> None:
        # aiormq matches returned messages by message_id: never two in flight with one id
        key = m.message_id or ""
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                channel = cast(aiormq.Channel, await self.channel.get_underlay_channel())
                await channel.basic_publish(
                    m.body, routing_key=queue, properties=copy_properties(m.properties, headers),
                    mandatory=True, timeout=HANDOFF_TIMEOUT, wait=False,
                )  # fmt: skip
        finally:
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]
