"""The partitioner: moves each event of an ordered subscriber's queue to its partition queue.

The subscriber's queue `Q` has one active consumer at a time (`x-single-active-consumer`), so
one process moves its events, in queue order: each is republished, body and properties intact,
to `Q.p<partition_of(bus-key)>` through the default exchange on one confirm channel, and acked
once confirmed. One channel keeps publish order, so a key's events reach their partition in the
order they reached `Q`. A crash between confirm and ack moves an event twice: the later copy is
a duplicate of one already ahead of it, which the idempotency store absorbs.

Each event is stamped with a sequence number (`bus-seq`) the first time it is moved (a retry
coming back keeps its own): the partitioner's clock in nanoseconds, strictly increasing in one
process. A key's later events get larger numbers, also across a takeover of the partitioner, as
long as the replicas' clocks agree to better than the takeover takes (the broker first has to
see the old partitioner's connection go). The gates order a key's laps by them.

No broker plugin is needed: the hash is ours (the consistent-hash exchange, where enabled, would
save a hop, but never required).
"""

from __future__ import annotations

import time
from typing import cast

import aiormq
from aio_pika.abc import AbstractChannel

from bus.amqp.delivery import Delivery, copy_properties
from bus.ordering.partitions import SEQ, key_of, partition_of
from bus.topology.model import Subscriber


class Partitioner:
    """`await route(delivery)`: republish to its partition with a confirm; the caller acks."""

    def __init__(self, sub: Subscriber, channel: AbstractChannel) -> None:
        """*channel*: a confirm channel with `on_return_raises`, used for nothing else."""
        self.sub = sub
        self.channel = channel
        self._names = sub.partition_queues
        self._last = 0

    def partition(self, m: Delivery) -> str:
        return self._names[partition_of(key_of(m.headers, m.message_id), self.sub.partitions)]

    async def route(self, m: Delivery) -> None:
        """Republish *m* to its partition; returns once the broker confirmed it.

        Call it from each delivery's own task before its first await elsewhere: aiormq's publish
        lock is first come first served, so the publishes keep the deliveries' order."""
        queue = self.partition(m)
        headers = dict(m.headers)
        if SEQ not in headers:  # synchronously, in delivery order
            self._last = max(self._last + 1, time.time_ns())
            headers[SEQ] = self._last
        channel = cast(aiormq.Channel, await self.channel.get_underlay_channel())
        await channel.basic_publish(
            m.body, routing_key=queue, mandatory=True,
            properties=copy_properties(m.properties, headers),
        )  # fmt: skip
