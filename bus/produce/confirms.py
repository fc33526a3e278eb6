"""Publishes on an aiormq confirm channel in bulk: one write for every publish started in one turn
of the event loop, each with its own confirm.

aiormq's `basic_publish` costs, per message, a lock, a timeout scope, pamqp's marshalling and a
write (one `send` system call): most of a bulk publisher's time. Here a publish registers its
confirm with the channel exactly as `basic_publish` does (the next delivery tag, a future the
channel rejects when it closes, the message id for matching a return) and appends its frames
(`bus.produce.frames`) to a buffer that goes to the connection's writer once the current loop
turn ends.

Delivery tags must reach the broker in the order they were taken. So nothing else may publish on
the channel while frames wait in the buffer: `await drained()` first (the publisher does so
before any `basic_publish` of its own), and `bus.produce.publisher` sends nothing through this while
such a `basic_publish` is under way. aiormq's write queue is bounded (10 frames): when it is
full, the frames wait in a task (until their channel closes), and later ones queue behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial

import aiormq
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic

from bus.amqp.writes import written
from bus.envelope import Wire
from bus.produce.frames import PublishFrames


class ConfirmWriter:
    """`start(channel, wire, exchange, routing_key)` -> (confirm future, delivery tag)."""

    def __init__(self) -> None:
        self._channel: aiormq.Channel | None = None
        self._frames: PublishFrames | None = None
        self._pending: list[bytes] = []
        self._scheduled = False
        self._putting: asyncio.Task[None] | None = None  # frames waiting for room in the queue

    def start(
        self, channel: aiormq.Channel, wire: Wire, exchange: str, routing_key: str
    ) -> tuple[asyncio.Future[object], int]:
        """Register the publish and buffer its frames; raises when the channel is closed."""
        payload = self._frames_of(channel).frames(wire, exchange, routing_key)  # may raise
        return self._register(channel, payload, wire.message_id)

    def start_copy(
        self, channel: aiormq.Channel, body: bytes, properties: Basic.Properties,
        exchange: str, routing_key: str,
    ) -> tuple[asyncio.Future[object], int]:  # fmt: skip
        """`start` for a message published again as it came (*properties* as they are)."""
        payload = self._frames_of(channel).copy(body, properties, exchange, routing_key)
        return self._register(channel, payload, properties.message_id or "")

    def _frames_of(self, channel: aiormq.Channel) -> PublishFrames:
        if channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
        frames = self._frames
        if channel is not self._channel or frames is None:  # a new channel after a reconnect
            self.flush()
            frames = self._frames = PublishFrames(channel.number, channel.max_content_size)
            self._channel = channel
        return frames

    def _register(
        self, channel: aiormq.Channel, payload: bytes, message_id: str
    ) -> tuple[asyncio.Future[object], int]:
        channel.delivery_tag += 1
        tag = channel.delivery_tag
        confirmation = channel.create_future()
        channel.confirmations[tag] = confirmation
        channel.message_id_delivery_tag[message_id] = tag
        self._pending.append(payload)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        return confirmation, tag

    @staticmethod
    def forget(channel: aiormq.Channel, message_id: str, tag: int) -> None:
        """Once confirmed (or given up): drop the id aiormq matches returns with."""
        if channel.message_id_delivery_tag.get(message_id) == tag:
            del channel.message_id_delivery_tag[message_id]

    def flush(self) -> None:
        """Hand every buffered publish to the connection's writer, in one frame of bytes.

        On a channel that closed meanwhile they are dropped: its confirms were rejected with
        the close (the publisher sends those events again), and frames on a closed channel
        number would make the broker close the whole connection.
        """
        self._scheduled = False
        channel, pending = self._channel, self._pending
        if not pending or channel is None:
            return
        self._pending = []
        if channel.is_closed:
            return
        frame = ChannelFrame(payload=b"".join(pending), should_close=False)
        previous = self._putting
        if previous is None or previous.done():
            try:
                channel.write_queue.put_nowait(frame)
                return
            except asyncio.QueueFull:
                previous = None
        self._putting = asyncio.get_running_loop().create_task(self._put(channel, frame, previous))

    @staticmethod
    async def _put(
        channel: aiormq.Channel, frame: ChannelFrame, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # frames go out in order
        # frames of a channel that closed are dropped (its confirms failed with it), also
        # while they wait for room in a dead connection's queue (`bus.amqp.writes`)
        if not channel.is_closed:  # on a live connection, frames of a closed channel close it
            with contextlib.suppress(aiormq.exceptions.ChannelInvalidStateError):
                await written(channel, partial(channel.write_queue.put, frame))

    async def drained(self) -> None:
        """Until every publish started so far is in the connection's write queue."""
        self.flush()
        while self._putting is not None and not self._putting.done():
            await asyncio.wait([self._putting])
