"""Keep one `basic.consume` alive on a robust channel, delivering aiormq frames as `Delivery`.

aio-pika's `Queue.consume` would wrap every delivery in an `IncomingMessage` inside a second
task (see bus.amqp.delivery for why we skip it). Consuming on the underlying aiormq channel means
re-consuming is ours to do: after the robust channel reopens (a reconnect, a channel error)
and after the broker cancels the consumer (queue deleted, quorum leader moved), we consume
again, every `interval` seconds until it works or we are stopped.

The consumer tag is ours, chosen before `basic.consume` is sent, so a stop that comes while a
consume is in flight still knows what to cancel, and a broker cancel can never be missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from bus.amqp.delivery import Delivery

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
        self._prefix = f"bus.{uuid.uuid4().hex[:12]}"
        self._serial = itertools.count(1)
        self._tag: str | None = None
        self._underlay: aiormq.Channel | None = None  # where _tag consumes
        self._stopped = False
        self._in_rpc = False
        self._wake = asyncio.Event()
        self._resuming: asyncio.Task[None] | None = None

    @property
    def consuming(self) -> bool:
        """The broker delivers to us right now (as far as this process can know)."""
        u = self._underlay
        return (
            not self._stopped
            and self._tag is not None
            and u is not None
            and not u.is_closed
            and self._tag in u.consumers
        )

    async def start(self) -> None:
        await self._consume()
        self.channel.reopen_callbacks.add(self._on_reopen)

    async def cancel(self) -> None:
        """Stop consuming. Deliveries already received still run; the rest stay in the queue."""
        self._stopped = True
        self.channel.reopen_callbacks.discard(self._on_reopen)
        resuming = self._resuming
        if resuming is not None and not resuming.done():
            if self._in_rpc:  # let it finish: a cancelled aiormq rpc closes the channel, and
                self._wake.set()  # with it every running handler
                await asyncio.wait([resuming], timeout=10)
            resuming.cancel()
        await self._cancel_current()

    async def close(self) -> None:
        """Stop by closing the channel, without a `basic.cancel` first: the broker removes the
        consumer and returns every unacknowledged delivery in place in one step. (After a
        cancel, a single-active-consumer queue would hand itself on while deliveries are
        still out.)"""
        self._stopped = True
        self.channel.reopen_callbacks.discard(self._on_reopen)
        if self._resuming is not None and not self._resuming.done():
            self._resuming.cancel()
        self._tag = None
        with contextlib.suppress(Exception):  # already closed: the same for the broker
            await self.channel.close()

    async def _cancel_current(self) -> None:
        tag, underlay, self._tag = self._tag, self._underlay, None
        if tag is None or underlay is None or underlay.is_closed or tag not in underlay.consumers:
            return
        try:
            await underlay.basic_cancel(tag)
        except Exception:  # a dead channel has no consumer to cancel
            log.debug("cancel of %s failed", tag, exc_info=True)

    async def _deliver(self, message: DeliveredMessage) -> None:
        await self.on_delivery(Delivery(message))

    async def _consume(self) -> None:
        underlay = cast(aiormq.Channel, await self.channel.get_underlay_channel())
        underlay.on_consumer_cancel_callbacks.add(self._on_cancel)
        tag = f"{self._prefix}.{next(self._serial)}"
        self._tag, self._underlay = tag, underlay
        self._in_rpc = True
        try:
            await underlay.basic_consume(self.queue, self._deliver, consumer_tag=tag)
        finally:
            self._in_rpc = False
        if self._stopped:  # stopped while the consume was in flight
            await self._cancel_current()

    def _on_reopen(self, *_: Any) -> None:
        # the old channel, and its consumer, are gone (unless a resume already consumed on
        # the new one: then there is nothing to do)
        if not self.consuming:
            self._resume("the channel reopened")

    def _on_cancel(self, frame: Basic.Cancel) -> None:
        if frame.consumer_tag == self._tag:
            self._resume("the broker cancelled the consumer")

    def _resume(self, why: str) -> None:
        if self._stopped or (self._resuming is not None and not self._resuming.done()):
            return
        log.info("consuming %s again: %s", self.queue, why)
        self._resuming = asyncio.get_running_loop().create_task(self._resume_until_consuming())

    async def _resume_until_consuming(self) -> None:
        while not self._stopped and not self.consuming:
            try:
                await self.channel.ready()  # reopened and its qos applied again
                if self._stopped or self.consuming:
                    return
                await self._consume()
            except Exception as exc:
                log.warning("cannot consume %s yet (%s: %s); trying again in %.0fs",
                            self.queue, type(exc).__name__, exc, self.interval)  # fmt: skip
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
