"""The bus's own frame reader for the connections it opens: one buffered read per loop turn.

aiormq reads every frame with three `readexactly` calls under a lock, decodes it with pamqp's
generic unmarshaling, queues it to its channel, and a second task per channel takes it off the
queue again (three hops for the three frames of one delivery) before a task runs the consumer.
On the consume path that was about half of a subscriber's CPU.

`BufferedConnection` is an aiormq `Connection` that reads its socket its own way and changes
nothing else: it takes whatever bytes have arrived, cuts them into frames, and

- decodes the three frames of a `basic.deliver` (method, content header, body frames, however
  many the body was split into by `frame_max`) with `bus.amqp.wire` and, when the channel's own
  reader is idle (nothing queued for it), starts the consumer exactly as aiormq's channel does:
  one task, in the channel's task store (so closing the channel cancels it), same done-callback;
  when the channel is busy with earlier frames, it queues the three frames to it, in order, so
  its reader handles them after those, as it always did;
  a consumer registered in the channel's `INLINE` map is called in place instead, no task;
- hands every other frame (connection.blocked/unblocked, heartbeats, close and close-ok,
  channel.flow, basic.cancel, confirms, returns, get-ok, every RPC reply) to aiormq's own handling
  unchanged: connection frames to the connection's handlers, channel frames to the channel's
  queue.

Other code that imports aiormq keeps the stock reader: only connections the bus creates through
`bus.amqp.connection.connect` (and `connect_plain(..., frames=True)`, the history reader's)
are `BufferedConnection`s, and `BUS_FRAME_READER=aiormq` turns it
off (`enabled`). The reader replaces aiormq's private `Connection.__reader` (it is started by
`Connection.connect` as `self.__reader(...)`); `supported()` checks the private names it relies
on are there, and when an aiormq upgrade removes one the stock reader is used, with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from typing import Any

import aio_pika
import aiormq
import pamqp.frame
from aio_pika.abc import UnderlayConnection
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

from bus.amqp import wire
from bus.errors import ConfigError

log = logging.getLogger(__name__)

SETTING = "BUS_FRAME_READER"
CHOICES = ("bus", "aiormq")
DEFAULT = "bus"
READ_SIZE = 256 * 1024  # per read: a loop turn's worth of frames (frame_max is 128 KiB)
FRAME_END = 0xCE
_HEAD = struct.Struct(">BHI").unpack_from
_IDS = struct.Struct(">HH").unpack_from
# a channel attribute, {consumer tag: a plain function}: that consumer's deliveries, taken off
# the wire with its channel idle, are handed to the function here instead of a task each (a
# bulk reader whose function only stores the message: `bus.history.reader`). Its deliveries
# queued to a busy channel must be taken in place there too, or one could overtake another.
INLINE = "bus_inline"
_CLOSE_RESPONSES = (spec.Channel.Close, spec.Channel.CloseOk)
# the private parts of aiormq.Connection the reader stands in for or calls, and of aio-pika's
# RobustConnection that `bus.amqp.connection` overrides to open a BufferedConnection
_PRIVATE_STATE = (
    "_Connection__connection_unblocked",
    "_Connection__last_frame_time",
    "_Connection__heartbeat_grace_timeout",
)
_PRIVATE = (
    "_Connection__reader",
    "_Connection__heartbeat",
    "_Connection__handle_close",
    "_Connection__handle_channel_close_ok",
    "_Connection__handle_channel_update_secret_ok",
    "_Connection__handle_connection_blocked",
    "_Connection__handle_connection_unblocked",
)


def enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether `BUS_FRAME_READER` (`bus`, the default, or `aiormq`) asks for this reader."""
    env = os.environ if environ is None else environ
    value = env.get(SETTING, DEFAULT).strip().lower() or DEFAULT
    if value not in CHOICES:
        raise ConfigError(f"{SETTING} {value!r}: use bus or aiormq")
    return value == "bus"


def supported() -> bool:
    """aiormq and aio-pika still have the private methods this reader replaces or calls."""
    robust = aio_pika.RobustConnection
    return all(hasattr(aiormq.Connection, name) for name in _PRIVATE) and hasattr(
        robust, "_RobustConnection__connect_transport"
    )


_warned = False


def wanted() -> bool:
    """Whether the bus's connections get this reader: `BUS_FRAME_READER` asks for it and this
    aiormq and aio-pika fit it (one warning when they do not)."""
    global _warned
    if not enabled():
        return False
    if supported():
        return True
    if not _warned:
        _warned = True
        log.warning("this aiormq or aio-pika does not fit the bus's frame reader: using aiormq's")
    return False


async def open_connection(url: Any, timeout: float | None = None, **kwargs: Any) -> Any:
    """An aiormq connection to *url*, connected: a `BufferedConnection` when this aiormq has
    what it needs (else aiormq's own, with one warning)."""
    global _warned
    conn: aiormq.Connection = BufferedConnection(url, **kwargs)
    if not all(hasattr(conn, name) for name in _PRIVATE_STATE):
        if not _warned:
            _warned = True
            log.warning("this aiormq does not fit the bus's frame reader: using aiormq's")
        conn = aiormq.Connection(url, **kwargs)
    await asyncio.wait_for(conn.connect(), timeout=timeout)
    await conn.ready()
    return conn


class BufferedUnderlay(UnderlayConnection):
    """aio-pika's holder of the aiormq connection, making a `BufferedConnection`."""

    @classmethod
    async def make_connection(
        cls, url: Any, timeout: float | None = None, **kwargs: Any
    ) -> aiormq.abc.AbstractConnection:
        conn: aiormq.abc.AbstractConnection = await open_connection(url, timeout, **kwargs)
        return conn


_NOT_MINE, _PART, _WHOLE = object(), object(), object()


class _Pending:
    """A delivery being read on one channel: its method frame, then header, then body parts."""

    __slots__ = ("deliver", "header", "parts", "received")

    def __init__(self, deliver: spec.Basic.Deliver) -> None:
        self.deliver = deliver
        self.header: ContentHeader | None = None
        self.parts: list[bytes] = []
        self.received = 0

    def body(self) -> bytes:
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


class BufferedConnection(aiormq.Connection):
    """aiormq's connection with the bus's frame reader (see the module's docstring)."""

    async def _Connection__reader(self, frame_receiver: Any) -> None:  # replaces __reader
        self._Connection__connection_unblocked.set()  # type: ignore[attr-defined]
        self.connected.set()
        if self.heartbeat_timeout > 0:
            self.create_task(self._Connection__heartbeat())  # type: ignore[attr-defined]
        try:
            await self._read(frame_receiver.reader)
        except _CloseOk:
            return  # Close-Ok is the last frame; the writer waits for the reader to stop
        except asyncio.CancelledError:
            if self.is_connection_was_stuck:
                log.warning(
                    "Server connection %r was stuck. No frames were received in %d seconds.",
                    self, self._Connection__heartbeat_grace_timeout,  # type: ignore[attr-defined]
                )  # fmt: skip
                self._writer_task.cancel()
            raise

    async def _read(self, reader: asyncio.StreamReader) -> None:
        pending: dict[int, _Pending] = {}
        rest = b""
        loop = self.loop
        while True:
            chunk = await _read_some(reader, len(rest))
            self._Connection__last_frame_time = loop.time()
            data = rest + chunk if rest else chunk
            size = len(data)
            pos = 0
            while size - pos >= 8:
                kind, channel, length = _HEAD(data, pos)
                end = pos + 7 + length
                if end >= size:
                    break  # the rest of this frame is still on its way
                if data[end] != FRAME_END:
                    raise InvalidFrameError(f"frame end {data[end]:#x} is not {FRAME_END:#x}")
                start, frame_at, pos = pos + 7, pos, end + 1
                if channel:
                    taken = _content(pending, kind, channel, data, start, end)
                    if taken is _WHOLE:
                        done = pending.pop(channel)
                        if not self._delivered(channel, done):
                            await _queue(self.channels[channel], done)
                    if taken is not _NOT_MINE:
                        continue
                if kind == 8 and not channel:
                    continue  # a heartbeat: its arrival (the time above) is all it says
                await self._frame(pending, data[frame_at : end + 1])
            rest = data[pos:]

    def _delivered(self, channel: int, p: _Pending) -> bool:
        """One whole delivery to its consumer now; False when its channel has frames to handle
        first (the caller queues it after them)."""
        ch = self.channels.get(channel)
        if ch is None:
            log.error("Got frame for closed channel %d: %r", channel, p.deliver)
            return True
        if not isinstance(ch, aiormq.Channel) or not _idle(ch.frames):
            return False
        # as aiormq.Channel._on_deliver_frame, without the three trips through ch.frames
        tag = p.deliver.consumer_tag
        consumer = ch.consumers.get(tag)  # type: ignore[arg-type]
        if consumer is not None:
            header = p.header
            assert header is not None  # a whole delivery has one
            message = DeliveredMessage(delivery=p.deliver, header=header, body=p.body(), channel=ch)
            inline = getattr(ch, INLINE, None)
            take = inline.get(tag) if inline else None
            if take is not None:
                take(message)
                return True
            task = ch.create_task(consumer(message))
            task.add_done_callback(ch._on_consumer_done)
        return True

    async def _frame(self, pending: dict[int, _Pending], raw: bytes) -> None:
        """Any other frame, decoded by pamqp and handled as aiormq's reader does."""
        try:
            weight, channel, frame = pamqp.frame.unmarshal(raw)
        except PAMQPException as exc:
            raise InvalidFrameError(str(exc)) from exc
        p = pending.pop(channel, None)
        if p is not None:  # a delivery cut short: let aiormq's channel see (and refuse) it
            ch = self.channels.get(channel)
            if ch is not None:
                await _queue(ch, p, partial=True)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Received frame %r in channel #%d weight=%s on %r",
                      frame, channel, weight, self)  # fmt: skip
        if channel == 0:
            await self._connection_frame(frame)
            return
        ch = self.channels.get(channel)
        if ch is None:
            log.error("Got frame for closed channel %d: %r", channel, frame)
            return
        if isinstance(frame, _CLOSE_RESPONSES):
            self.channels.pop(channel, None)
        await ch.frames.put((weight, frame))

    async def _connection_frame(self, frame: Any) -> None:
        """Channel 0, as aiormq's reader handles it."""
        match frame:
            case spec.Connection.CloseOk():
                raise _CloseOk  # the last frame: the reader stops, as aiormq's does
            case spec.Connection.Close():
                await self._Connection__handle_close(frame)  # type: ignore[attr-defined]
            case spec.Channel.CloseOk():
                await self._Connection__handle_channel_close_ok(frame)  # type: ignore[attr-defined]
            case spec.Connection.UpdateSecretOk():
                await self._Connection__handle_channel_update_secret_ok(frame)  # type: ignore[attr-defined]
            case spec.Connection.Blocked():
                await self._Connection__handle_connection_blocked(frame)  # type: ignore[attr-defined]
            case spec.Connection.Unblocked():
                await self._Connection__handle_connection_unblocked(frame)  # type: ignore[attr-defined]
            case _:
                if frame.name != "Heartbeat":
                    log.error("Unexpected frame %r", frame)


def _content(
    pending: dict[int, _Pending], kind: int, channel: int, data: bytes, start: int, end: int
) -> object:
    """Take a frame of a delivery: _NOT_MINE (aiormq handles it), _PART, or _WHOLE (the
    delivery on *channel* is complete)."""
    p = pending.get(channel)
    try:
        if kind == 1:
            if p is not None or _IDS(data, start) != (60, 60):
                return _NOT_MINE
            pending[channel] = _Pending(wire.deliver(data[start + 4 : end], 0))
            return _PART
        if p is None:
            return _NOT_MINE
        if kind == 2 and p.header is None:
            p.header = wire.header(data[start:end], 0)
            if p.header.body_size:
                return _PART
        elif kind == 3 and p.header is not None:
            p.parts.append(data[start:end])
            p.received += end - start
            if p.received < p.header.body_size:
                return _PART
        else:
            return _NOT_MINE
    except (IndexError, ValueError, UnicodeDecodeError, struct.error) as exc:
        raise InvalidFrameError(f"malformed frame on channel {channel}: {exc}") from exc
    return _WHOLE


class _CloseOk(Exception):
    """Connection.CloseOk arrived: the reader returns."""


async def _read_some(reader: asyncio.StreamReader, have: int) -> bytes:
    """What has arrived (at least a byte), with aiormq's errors for a lost connection."""
    try:
        chunk = await reader.read(READ_SIZE)
    except ConnectionRefusedError as e:
        raise AMQPConnectionError(f"Server connection refused: {e!r}") from e
    except ConnectionResetError as e:
        raise AMQPConnectionError(f"Server connection reset: {e!r}") from e
    except ConnectionError as e:
        raise AMQPConnectionError(f"Server connection error: {e!r}") from e
    except OSError as e:
        raise AMQPConnectionError(f"Server communication error: {e!r}") from e
    if not chunk:
        raise AMQPConnectionError(
            f"Server connection unexpectedly closed. Read {have} bytes of a frame"
        )
    return chunk


def _idle(frames: asyncio.Queue[Any]) -> bool:
    """The channel's reader waits for its next frame with nothing before it: a delivery
    started now cannot overtake anything it has still to handle."""
    if not frames.empty():
        return False
    getters = getattr(frames, "_getters", None) or ()
    return any(not g.done() for g in getters)


async def _queue(ch: Any, p: _Pending, *, partial: bool = False) -> None:
    """The delivery's frames onto its channel's queue, as aiormq's reader would put them (a
    delivery cut short: the frames that came)."""
    await ch.frames.put((0, p.deliver))
    if p.header is None:
        return
    await ch.frames.put((0, p.header))
    if p.parts or (p.header.body_size and not partial):
        await ch.frames.put((0, ContentBody(p.body())))
