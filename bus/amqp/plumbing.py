"""The small AMQP chores every tool repeats: a short-lived channel closed quietly, a passive
look at a queue, and the one-message record queue (`bus topology apply`'s and the scheduler's
memory on the broker itself).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

log = logging.getLogger("bus.amqp")

# A record queue holds its newest message only: a new write drops the previous one.
RECORD_ARGUMENTS: dict[str, Any] = {"x-queue-type": "classic", "x-max-length": 1}
RECORD_TIMEOUT = 10.0  # seconds a record's publish may take before it fails


async def close_quietly(thing: AbstractChannel | AbstractConnection) -> None:
    """Close a channel or connection that may already be closed or broken; never raises.
    (A channel that a failed passive declaration closed is already closed: nothing to do.)"""
    if thing.is_closed:
        return
    try:
        await thing.close()
    except Exception:
        log.debug("close failed", exc_info=True)


@asynccontextmanager
async def scratch_channel(
    conn: AbstractConnection, *, confirms: bool = False
) -> AsyncIterator[AbstractChannel]:
    """A channel for a few operations, closed quietly at the end: unacked deliveries go back
    to their queues, in order."""
    channel = await conn.channel(publisher_confirms=confirms)
    try:
        yield channel
    finally:
        await close_quietly(channel)


@dataclass(frozen=True, slots=True)
class Counts:
    messages: int  # ready
    consumers: int


async def queue_counts(conn: AbstractConnection, name: str) -> Counts | None:
    """Ready messages and consumers of queue *name* (a passive declaration), or None when it
    does not exist."""
    async with scratch_channel(conn) as channel:
        try:
            queue = await channel.declare_queue(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        r = queue.declaration_result
        return Counts(int(r.message_count or 0), int(r.consumer_count or 0))


async def read_record(conn: AbstractConnection, queue: str) -> bytes | None:
    """The body of the one message of record queue *queue*, left in place; None when the queue
    does not exist or is empty."""
    async with scratch_channel(conn) as channel:
        try:
            q = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        message = await q.get(no_ack=False, fail=False)
        if message is None:
            return None
        await message.nack(requeue=True)
        return bytes(message.body)


async def write_record(
    conn: AbstractConnection, queue: str, body: bytes, *, content_type: str | None = None
) -> None:
    """Make *body* the one message of record queue *queue* (durable, declared if need be),
    persistent and confirmed before this returns."""
    async with scratch_channel(conn, confirms=True) as channel:
        await channel.declare_queue(queue, durable=True, arguments=RECORD_ARGUMENTS)
        await channel.default_exchange.publish(
            aio_pika.Message(
                body, content_type=content_type, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            ),
            routing_key=queue,
            timeout=RECORD_TIMEOUT,  # a dead connection's full write queue: never for ever
        )
