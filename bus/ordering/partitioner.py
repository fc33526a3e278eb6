"""The partitioner: moves each event of an ordered subscriber's queue to its partition queue.

The subscriber's queue `Q` has one active consumer at a time (`x-single-active-consumer`), so
one process moves its events, in queue order: each is republished, body and properties intact,
to `Q.p<partition_of(bus-key)>` through the default exchange on one confirm channel, and acked
once confirmed. One channel keeps publish order, so a key's events reach their partition in the
order they reached `Q`. A crash between confirm and ack moves an event twice: the later copy is
a duplicate of one already ahead of it, which the idempotency store absorbs.

A move that fails (the connection went) stops every later one: they would reach their
partition ahead of it. The caller then returns every event in hand to the queue in place by
closing its channel, and consumes again.

Each event is stamped with a sequence number (`bus-seq`) the first time it is moved (a retry
coming back keeps its own): the partitioner's clock in nanoseconds, strictly increasing in one
process. A key's later events get larger numbers, also across a takeover of the partitioner, as
long as the replicas' clocks agree to better than the takeover takes (the broker first has to
see the old partitioner's connection go). The gates order a key's laps by them.

No broker plugin is needed: the hash is ours (the consistent-hash exchange, where enabled, would
save a hop, but never required).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractChannel
from pamqp.commands import Basic

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
        self._underlay: aiormq.Channel | None = None
        self._reopening = asyncio.Lock()
        self._queued = 0  # routes waiting behind a reopen: later ones queue behind them
        # the stamp of a move that failed: no later event may be moved ahead of it, until the
        # events in hand are back in the queue (`reset`)
        self._failed: int | None = None
        self._epoch = 0  # moves of an earlier epoch (before a reset) never publish

    def partition(self, m: Delivery) -> str:
        return self._names[partition_of(key_of(m.headers, m.message_id), self.sub.partitions)]

    async def route(self, m: Delivery) -> None:
        """Republish *m* to its partition; returns once the broker confirmed it.

        Call it from each delivery's own task before its first await elsewhere: aiormq's publish
        lock is first come first served, so the publishes keep the deliveries' order."""
        queue = self.partition(m)
        headers = dict(m.headers)
        self._last = order = max(self._last + 1, time.time_ns())  # in delivery order
        headers.setdefault(SEQ, order)  # a retry keeps the number it had
        epoch = self._epoch
        try:
            channel = self._underlay
            if channel is None or channel.is_closed or self._queued:
                channel = await self._reopened()
            if epoch != self._epoch:
                raise RuntimeError("its delivery went back to the queue")
            if self._failed is not None and order > self._failed:
                raise RuntimeError("an earlier event of the queue could not be moved")
        except BaseException:
            self._fail(order, epoch)
            raise
        # wait=False: the frame goes into the connection's write queue (first in, first out)
        # without holding the channel's lock until the socket drained, which would move one
        # event per turn of the loop; the confirm is still awaited
        try:
            await channel.basic_publish(
                m.body, routing_key=queue, mandatory=True, wait=False,
                properties=copy_properties(m.properties, headers),
            )  # fmt: skip
        except BaseException:
            self._fail(order, epoch)
            raise

    def _fail(self, order: int, epoch: int) -> None:
        if epoch == self._epoch and (self._failed is None or order < self._failed):
            self._failed = order

    @property
    def failed(self) -> bool:
        """A move failed: the caller returns every event in hand to the queue, in place (by
        closing its channel), then calls `reset`."""
        return self._failed is not None

    def reset(self) -> None:
        """The events in hand are back in the queue: moves of new deliveries may go on (those
        of the earlier ones still on their way fail)."""
        self._failed = None
        self._epoch += 1

    async def mark(self, queue: str, headers: dict[str, Any]) -> None:
        """An empty message with *headers* to *queue* (a sentinel), confirmed."""
        channel = await self._reopened()
        properties = Basic.Properties(headers=headers, delivery_mode=2,
                                      message_id=f"sentinel-{uuid.uuid4().hex[:12]}")  # fmt: skip
        await channel.basic_publish(b"", routing_key=queue, mandatory=True, properties=properties)

    async def _reopened(self) -> aiormq.Channel:
        """The channel, reopened if a cut closed it for good (a robust channel whose reopen
        failed while its connection went). Routes wait here in arrival order (the lock is
        first come, first served), and later ones queue behind them, so order is kept."""
        self._queued += 1
        try:
            async with self._reopening:
                channel = self._underlay
                if channel is None or channel.is_closed:
                    if self.channel.is_closed:
                        await self.channel.reopen()
                    channel = cast(aiormq.Channel, await self.channel.get_underlay_channel())
                    self._underlay = channel
                return channel
        finally:
            self._queued -= 1
