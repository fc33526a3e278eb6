"""Republish a delivery to a retry queue or the DLQ: confirmed, `mandatory`, body intact.

Under a broker alarm (`connection.blocked`) the hand-off waits: its deadline stops while the
broker blocks publishing, so a failed event is retried or parked when the alarm clears, rather
than given up on after 30 s and rejected into the DLQ without its failure story.

A nack or a lost connection is sent again (same message id) until the deadline, and reported
to the connection's confirm watch (`bus.produce.stall`, shared with the subscriber's
`ctx.publish`): a connection that nacks everything or confirms nothing is replaced, as for
every other publish, instead of the event being parked because of a failover.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel

from bus.amqp.delivery import Delivery, copy_properties
from bus.amqp.flow import Flow

HANDOFF_TIMEOUT = 30.0
RESEND_MAX = 2.0  # seconds between two attempts at most (from 50 ms, doubling)
# after these the copy may not have reached the broker, or it said no for now: send it again
_AGAIN = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ConnectionClosed,
    ConnectionError,
)


class ConfirmReport(Protocol):
    """What a publish tells the connection's confirm watch (`bus.produce.stall.StallWatch`)."""

    def sent(self) -> None: ...
    def confirmed(self) -> None: ...
    def nacked(self) -> None: ...
    def settled(self) -> None: ...


class HandOff:
    """Publishes copies through the default exchange (routing key = queue name) on a confirm
    channel with `on_return_raises`, so an unroutable copy raises instead of vanishing."""

    def __init__(self, channel: AbstractChannel, flow: Flow | None = None) -> None:
        """*flow*: the broker's blocks of *channel*'s connection (`bus.amqp.flow`), waited out."""
        self.channel = channel
        self.flow = flow
        self.watch: ConfirmReport | None = None  # the connection's confirm watch, if any
        # message id -> (its lock, how many hand-offs hold or wait for it). Dropped when the
        # count reaches 0: `lock.locked()` is False while a woken waiter has not resumed yet,
        # so deleting on that would let a newcomer take a fresh lock beside the waiter.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def republish(self, m: Delivery, queue: str, headers: dict[str, Any]) -> None:
        # aiormq matches returned messages by message_id: never two in flight with one id
        key = m.message_id or ""
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                deadline = (
                    asyncio.timeout(HANDOFF_TIMEOUT) if self.flow is None
                    else self.flow.deadline(HANDOFF_TIMEOUT)  # stops while blocked
                )  # fmt: skip
                watch = self.watch
                if watch is not None:
                    watch.sent()
                try:
                    async with deadline:
                        await self._until_confirmed(m, queue, headers)
                finally:
                    if watch is not None:
                        watch.settled()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _until_confirmed(self, m: Delivery, queue: str, headers: dict[str, Any]) -> None:
        """Publish, and again after a nack or a lost connection, until the broker confirms;
        a returned copy (nothing bound) raises at once."""
        pause = 0.05
        properties = copy_properties(m.properties, headers)
        while True:
            try:
                channel = cast(aiormq.Channel, await self.channel.get_underlay_channel())
                await channel.basic_publish(
                    m.body, routing_key=queue, mandatory=True, wait=False, properties=properties
                )
            except aio_pika.exceptions.PublishError:
                raise  # returned: no queue for it, sending again will not help
            except aio_pika.exceptions.DeliveryError:
                if self.watch is not None:
                    self.watch.nacked()
            except _AGAIN:
                pass
            except Exception as exc:  # aiormq rejects a pending confirm with a bare Exception
                if type(exc) is not Exception:  # when its channel closes without a reason
                    raise
            else:
                if self.watch is not None:
                    self.watch.confirmed()
                return
            await asyncio.sleep(pause)
            pause = min(RESEND_MAX, pause * 2)
