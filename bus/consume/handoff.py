"""Republish a delivery to a retry queue or the DLQ: confirmed, `mandatory`, body intact.

Under a broker alarm (`connection.blocked`) the hand-off waits: its deadline stops while the
broker blocks publishing, so a failed event is retried or parked when the alarm clears, rather
than given up on after 30 s and rejected into the DLQ without its failure story.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractChannel

from bus.amqp.delivery import Delivery, copy_properties
from bus.amqp.flow import Flow

HANDOFF_TIMEOUT = 30.0


class HandOff:
    """Publishes copies through the default exchange (routing key = queue name) on a confirm
    channel with `on_return_raises`, so an unroutable copy raises instead of vanishing."""

    def __init__(self, channel: AbstractChannel, flow: Flow | None = None) -> None:
        """*flow*: the broker's blocks of *channel*'s connection (`bus.amqp.flow`), waited out."""
        self.channel = channel
        self.flow = flow
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
                channel = cast(aiormq.Channel, await self.channel.get_underlay_channel())
                deadline = (
                    asyncio.timeout(HANDOFF_TIMEOUT) if self.flow is None
                    else self.flow.deadline(HANDOFF_TIMEOUT)  # stops while blocked
                )  # fmt: skip
                async with deadline:
                    await channel.basic_publish(
                        m.body, routing_key=queue, mandatory=True, wait=False,
                        properties=copy_properties(m.properties, headers),
                    )  # fmt: skip
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
