"""Queue depths and consumers per subscriber, from AMQP alone (passive declarations)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import aiormq
from aio_pika.abc import AbstractConnection

from bus.topology.model import Topology


@dataclass(frozen=True)
class QueueState:
    name: str
    exists: bool
    ready: int = 0
    consumers: int = 0


@dataclass(frozen=True)
class SubscriberState:
    subscriber: str
    queue: QueueState
    retries: list[QueueState]
    dlq: QueueState

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


async def queue_state(conn: AbstractConnection, name: str) -> QueueState:
    channel = await conn.channel(publisher_confirms=False)
    try:
        q = await channel.declare_queue(name, passive=True)
        r = q.declaration_result
        return QueueState(name, True, int(r.message_count or 0), int(r.consumer_count or 0))
    except aiormq.exceptions.ChannelNotFoundEntity:
        return QueueState(name, False)
    finally:
        if not channel.is_closed:
            await channel.close()


async def collect(conn: AbstractConnection, topology: Topology) -> list[SubscriberState]:
    out = []
    for sub in topology.subscribers():
        out.append(
            SubscriberState(
                subscriber=sub.name,
                queue=await queue_state(conn, sub.queue),
                retries=[await queue_state(conn, q) for q in sub.retry_queues],
                dlq=await queue_state(conn, sub.dlq),
            )
        )
    return out
