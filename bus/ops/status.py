"""Queue depths and consumers per subscriber, from AMQP alone (passive declarations)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from aio_pika.abc import AbstractConnection

from bus.amqp.plumbing import queue_counts
from bus.topology.model import Topology

if TYPE_CHECKING:
    from bus.ops.partitions import PartitionState


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
    partitions: list[PartitionState] = field(default_factory=list)  # an ordered subscriber's

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


async def queue_state(conn: AbstractConnection, name: str) -> QueueState:
    counts = await queue_counts(conn, name)
    if counts is None:
        return QueueState(name, False)
    return QueueState(name, True, counts.messages, counts.consumers)


async def collect(conn: AbstractConnection, topology: Topology) -> list[SubscriberState]:
    from bus.ops.partitions import partition_states  # it builds on this module's QueueState

    out = []
    for sub in topology.subscribers():
        out.append(
            SubscriberState(
                subscriber=sub.name,
                queue=await queue_state(conn, sub.queue),
                retries=[await queue_state(conn, q) for q in sub.retry_queues],
                dlq=await queue_state(conn, sub.dlq),
                partitions=await partition_states(conn, sub) if sub.ordered else [],
            )
        )
    return out
