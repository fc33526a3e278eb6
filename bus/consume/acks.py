"""Acknowledge deliveries, coalescing acks of in-order completions into one `multiple` frame.

Deliveries of one channel carry increasing tags. Every loop turn, the longest run of settled
deliveries at the head of the channel's outstanding list is acked with one `basic.ack
multiple=true` for its highest acked tag; acks that complete out of order are sent one by one
in the same turn, so no ack ever waits behind a slow handler (which would stall the prefetch
window). A channel that died drops its state: the broker redelivers, the store absorbs.

A flush waits until *batch* settlements gathered or *hold* seconds passed, whichever comes
first (the runtime makes *batch* a quarter of the prefetch window, so the broker never waits
for them): every frame written costs a system call, and on a loopback connection the kernel
does the broker's receiving inside it (measured: a tenth of a fast consumer's CPU went to
writing acks about three at a time, as each read of the socket brought them in).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from enum import Enum
from functools import partial
from typing import Any

from bus.amqp.delivery import Delivery
from bus.amqp.writes import written

log = logging.getLogger(__name__)


class _State(Enum):
    RUNNING = 0
    ACK = 1  # to be acked
    SETTLED = 2  # acked one by one, rejected, nacked, or abandoned to the broker


class _Channel:
    __slots__ = ("channel", "order", "state")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.order: deque[int] = deque()
        self.state: dict[int, _State] = {}


class Acker:
    """One per consumer. `delivered()` each message on arrival, then `ack()` or `settled()`."""

    def __init__(self, batch: int = 1, hold: float = 0.002) -> None:
        self._channels: dict[int, _Channel] = {}
        self._scheduled = False
        self._flushing: asyncio.Task[None] | None = None
        self.batch = max(1, batch)
        self.hold = hold
        self._gathered = 0  # settled since the last flush
        self._held: asyncio.TimerHandle | None = None

    def _of(self, m: Delivery) -> _Channel:
        key = id(m.channel)
        ch = self._channels.get(key)
        if ch is None or ch.channel is not m.channel:
            ch = self._channels[key] = _Channel(m.channel)
        return ch

    def delivered(self, m: Delivery) -> None:
        if m.delivery_tag is None:
            return
        ch = self._of(m)
        ch.order.append(m.delivery_tag)
        ch.state[m.delivery_tag] = _State.RUNNING

    def running(self) -> set[tuple[int, int]]:
        """(channel, delivery tag) of every delivery whose handler has not finished."""
        return {
            (key, tag)
            for key, ch in self._channels.items()
            for tag, state in ch.state.items()
            if state is _State.RUNNING
        }

    def settled(self, m: Delivery) -> None:
        """The delivery was rejected, nacked or left to the broker: never ack it."""
        ch = self._channels.get(id(m.channel))
        if ch is not None and ch.channel is m.channel and m.delivery_tag in ch.state:
            self._gathered += 1
            ch.state[m.delivery_tag] = _State.SETTLED
            self._schedule()

    def ack(self, m: Delivery) -> None:
        ch = self._channels.get(id(m.channel))
        if ch is None or ch.channel is not m.channel or m.delivery_tag not in ch.state:
            if m.channel.is_closed:  # it died under the handler: the broker redelivers
                log.debug("ack of %s dropped: its channel is closed", m.delivery_tag)
                return
            raise RuntimeError("ack of a delivery that was never registered")
        self._gathered += 1
        ch.state[m.delivery_tag] = _State.ACK
        self._schedule()

    def _schedule(self) -> None:
        if self._held is not None and self._gathered >= self.batch:
            self._held.cancel()  # enough gathered: now
            self._held = None
            self._scheduled = False
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            if self._gathered < self.batch:
                self._held = loop.call_later(self.hold, self._start)
            else:
                loop.call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        self._held = None
        self._gathered = 0
        previous = self._flushing
        self._flushing = asyncio.get_running_loop().create_task(self._flush(previous))

    async def _flush(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # frames go out in order
        for key, ch in list(self._channels.items()):
            if ch.channel.is_closed:
                del self._channels[key]  # the broker requeued its deliveries
                continue
            try:
                await self._flush_channel(ch)
            except Exception as exc:  # the channel died under us: redelivery follows
                log.warning("acks on a closed channel were dropped (%s)", exc)
                self._channels.pop(key, None)

    async def _flush_channel(self, ch: _Channel) -> None:
        last_ack = None
        while ch.order and ch.state[ch.order[0]] is not _State.RUNNING:
            tag = ch.order.popleft()
            if ch.state.pop(tag) is _State.ACK:
                last_ack = tag
        # wait=False: the frame is in the connection's (ordered) write queue; awaiting the
        # socket's drain only held back the next turn's acks, and with them the prefetch window
        # (`written`: a dead connection's full write queue must not hold every later ack)
        channel = ch.channel
        if last_ack is not None:
            await written(channel, partial(channel.basic_ack, last_ack, multiple=True, wait=False))
        stragglers = [t for t, s in ch.state.items() if s is _State.ACK]
        for tag in stragglers:
            ch.state[tag] = _State.SETTLED
            await written(channel, partial(channel.basic_ack, tag, wait=False))

    async def drain(self) -> None:
        """Wait until every ack asked for so far has been written."""
        if self._held is not None:  # nothing to wait for: write them now
            self._held.cancel()
            self._start()
        while self._scheduled or (self._flushing is not None and not self._flushing.done()):
            if self._flushing is not None and not self._flushing.done():
                await asyncio.wait([self._flushing])
            else:
                await asyncio.sleep(0)
