"""A frame waiting for room in a connection's write queue gives up when its channel closes.

aiormq's write queue is bounded (10 frames), and every frame goes through it, even an ack sent
with `wait=False`: when the queue is full the write waits for room. When the connection dies
its writer stops taking frames, the channel closes, but nothing wakes a write already waiting:
it would wait for ever, and with it whatever comes after it (the acks of every later delivery,
so the prefetch window fills and consuming stops while the connection looks fine again).

`written(channel, send)` awaits *send* while there is room (then it cannot wait), and otherwise
races it against the channel's close.
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
    if queue is None or not queue.full():  # room: the write goes into the queue without waiting
        await send()
        return
    sending = asyncio.ensure_future(send())
    closing = channel.closing
    try:
        done, _ = await asyncio.wait([sending, closing], return_when=asyncio.FIRST_COMPLETED)
    finally:
        closing.cancel()  # an observer only: stops observing
        if not sending.done():
            sending.cancel()
    if sending not in done:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    sending.result()
