"""The partitioner: moves each event of an ordered subscriber's queue to its partition queue.

The subscriber's queue `Q` has one active consumer at a time (`x-single-active-consumer`), so
one process moves its events, in queue order: each is republished, body and properties intact,
to `Q.p<crc32(bus-key) % N>` through the default exchange on one confirm channel, and acked
once confirmed (a nack fails the move). With `partitioner: exchange` the broker routes the
bus's producers' events straight to their partition by the same hash (`bus-partition-<N>`),
and only what that exchange could not route, retries, replays and backfills pass through `Q`.
The moves started in one turn of the event loop go out in one write (`bus.produce.confirms`).
One channel keeps publish order, so a key's events reach their partition in the order they
reached `Q`. A crash between confirm and ack moves an event twice: the later copy is a
duplicate of one already ahead of it, which the idempotency store absorbs.

A move that fails (the connection went, the broker refused it) stops every later one: they
would reach their partition ahead of it. The caller then returns every event in hand to the
queue in place by closing its channel, and consumes again.

Each event is stamped with a sequence number (`bus-seq`) the first time it is moved (a retry
coming back keeps its own): the partitioner's clock in nanoseconds, strictly increasing in one
process. A key's later events get larger numbers, also across a takeover of the partitioner, as
long as the replicas' clocks agree to better than the takeover takes (the broker first has to
see the old partitioner's connection go). The gates order a key's laps by them. An event the
exchange routed straight to its partition has none: its partition's gate numbers it on arrival
(`bus.ordering.intake`), and its retry keeps that number when it passes through `Q`.
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
from bus.ordering.partitions import SEQ, key_of
from bus.produce.confirms import ConfirmWriter
from bus.topology.model import Subscriber
from bus.topology.ordering import partition_of

MARK_TIMEOUT = 30.0  # seconds a sentinel waits for its confirm


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
        self._writer = ConfirmWriter()

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
        # the frames join the other moves of this loop turn in one write (one system call for
        # us, one read for the broker); the delivery tag is taken now, in delivery order
        try:
            properties = copy_properties(m.properties, headers)
            confirmation, tag = self._writer.start_copy(channel, m.body, properties, "", queue)
        except BaseException:
            self._fail(order, epoch)
            raise
        try:  # a nack raises (aiormq's DeliveryError), as a lost connection does
            await confirmation
        except BaseException:
            self._fail(order, epoch)
            raise
        finally:
            ConfirmWriter.forget(channel, m.message_id or "", tag)

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
        confirmation, tag = self._writer.start_copy(channel, b"", properties, "", queue)
        try:  # bounded: the caller sends the sentinel again
            await asyncio.wait_for(asyncio.shield(confirmation), MARK_TIMEOUT)
        finally:
            ConfirmWriter.forget(channel, properties.message_id or "", tag)

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
