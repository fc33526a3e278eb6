"""A frame waiting for room in a connection's write queue gives up when its channel closes.

aiormq's write queue is bounded (10 frames), and every frame goes through it, even an ack sent
with `wait=False`: when the queue is full the write waits for room. When the connection dies
its writer stops taking frames, the channel closes, but nothing wakes a write already waiting:
it would wait for ever, and with it whatever comes after it (the acks of every later delivery,
so the prefetch window fills and consuming stops while the connection looks fine again).

`written(channel, send)` awaits *send* while there is room (then it does not wait for room),
and otherwise races it against the channel's close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiormq
from aiormq.abc import AbstractChannel


async def written(channel: AbstractChannel, send: Callable[[], Awaitable[object]]) -> None:
    """`await send()`, a write on *channel*; raises `ChannelInvalidStateError` if the channel
    closes while the write waits for room (the frame is dropped: its channel is gone)."""
    queue: asyncio.Queue[object] | None = getattr(channel, "write_queue", None)
    if queue is None or not queue.full():  # room: the frame goes into the queue at once
        await send()
        return
    sending = asyncio.ensure_future(send())
    closing = channel.closing  # aiormq >= 7.2: an observer of the close, ours to cancel
    try:
        done, _ = await asyncio.wait([sending, closing], return_when=asyncio.FIRST_COMPLETED)
    finally:
        closing.cancel()  # stops observing; the channel stays as it is
        if not sending.done():
            sending.cancel()
        elif not sending.cancelled():
            sending.exception()  # retrieved, also when we were cancelled in the same turn
    if sending not in done:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    sending.result()
