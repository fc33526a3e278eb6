"""Keep one `basic.consume` alive on a robust channel, delivering aiormq frames as `Delivery`.

aio-pika's `Queue.consume` would wrap every delivery in an `IncomingMessage` inside a second
task (see bus.delivery for why we skip it). Consuming on the underlying aiormq channel means
re-consuming is ours to do: after the robust channel reopens (a reconnect, a channel error)
and after the broker cancels the consumer (queue deleted, quorum leader moved), we consume
again, every `interval` seconds until it works or we are stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from bus.delivery import Delivery

log = logging.getLogger(__name__)

OnDelivery = Callable[[Delivery], Awaitable[None]]


class Consumer:
    """`await start()` consumes (raises if the queue is missing); `await cancel()` stops."""

    def __init__(
        self, channel: AbstractRobustChannel, queue: str, on_delivery: OnDelivery,
        *, interval: float = 1.0,
    ) -> None:  # fmt: skip
        self.channel = channel
        self.queue = queue
        self.on_delivery = on_delivery
        self.interval = interval
        self.tag: str | None = None
        self._stopped = False
        self._resuming: asyncio.Task[None] | None = None

    @property
    def consuming(self) -> bool:
        return self.tag is not None and not self._stopped

    async def start(self) -> None:
        await self._consume()
        self.channel.reopen_callbacks.add(self._on_reopen)

    async def cancel(self) -> None:
        """Stop consuming. Deliveries already received still run; the rest stay in the queue."""
        self._stopped = True
        self.channel.reopen_callbacks.discard(self._on_reopen)
        if self._resuming is not None:
            self._resuming.cancel()
        tag, self.tag = self.tag, None
        if tag is None or self.channel.is_closed:
            return
        try:
            underlay = await self.channel.get_underlay_channel()
            await underlay.basic_cancel(tag)
        except Exception:  # a dead channel has no consumer to cancel
            log.debug("cancel of %s failed", tag, exc_info=True)

    async def _deliver(self, message: DeliveredMessage) -> None:
        await self.on_delivery(Delivery(message))

    async def _consume(self) -> None:
        underlay = await self.channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_cancel)
        ok = await underlay.basic_consume(self.queue, self._deliver)
        self.tag = ok.consumer_tag

    def _on_reopen(self, *_: Any) -> None:
        self.tag = None  # the old channel, and its consumer, are gone
        self._resume("the channel reopened")

    def _on_cancel(self, frame: Basic.Cancel) -> None:
        if frame.consumer_tag == self.tag:
            self.tag = None
            self._resume("the broker cancelled the consumer")

    def _resume(self, why: str) -> None:
        if self._stopped or (self._resuming is not None and not self._resuming.done()):
            return
        log.info("consuming %s again: %s", self.queue, why)
        self._resuming = asyncio.get_running_loop().create_task(self._resume_until_consuming())

    async def _resume_until_consuming(self) -> None:
        while not self._stopped and self.tag is None:
            try:
                await self._consume()
            except Exception as exc:
                log.warning("cannot consume %s yet (%s: %s); trying again in %.0fs",
                            self.queue, type(exc).__name__, exc, self.interval)  # fmt: skip
                await asyncio.sleep(self.interval)
