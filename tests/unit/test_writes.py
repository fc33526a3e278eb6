"""`bus.amqp.writes.written`: a write waiting for room in a dead connection's write queue ends
when its channel closes, instead of waiting for ever."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from functools import partial
from typing import Any

import aiormq
import pytest

from bus.amqp.delivery import Delivery
from bus.amqp.writes import written
from tests.unit.fake_amqp import WritingChannel


def put(channel: WritingChannel, frame: str) -> Coroutine[Any, Any, None]:
    """The write under test: *frame* into *channel*'s write queue, through `written`."""
    return written(channel, partial(channel.write_queue.put, frame))  # type: ignore[arg-type]


async def test_a_write_with_room_goes_straight_into_the_queue() -> None:
    channel = WritingChannel(queue_size=2)
    await put(channel, "frame")
    assert channel.write_queue.get_nowait() == "frame"


async def test_a_write_waiting_for_room_gets_it_when_the_writer_takes_a_frame() -> None:
    channel = WritingChannel.full()
    write = asyncio.create_task(put(channel, "second"))
    await asyncio.sleep(0)
    assert channel.write_queue.get_nowait() == "never drained"  # the writer takes it after all
    await asyncio.wait_for(write, 1)
    assert channel.write_queue.get_nowait() == "second"


async def test_a_write_waiting_for_room_ends_when_its_channel_closes() -> None:
    channel = WritingChannel.full()
    write = asyncio.create_task(put(channel, "late"))
    await asyncio.sleep(0)
    assert not write.done()
    await channel.lose_connection()
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await asyncio.wait_for(write, 1)
    await asyncio.sleep(0)
    assert channel.write_queue.qsize() == 1  # the late frame was dropped, not queued


async def test_a_write_on_a_channel_already_closed_with_a_full_queue_fails_at_once() -> None:
    channel = WritingChannel.full()
    await channel.lose_connection()
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await asyncio.wait_for(put(channel, "late"), 1)
    await asyncio.sleep(0)
    assert channel.write_queue.qsize() == 1  # the late frame was dropped, not queued


async def test_a_nack_waiting_in_a_dead_connections_full_queue_ends_with_its_channel() -> None:
    channel = WritingChannel.full()
    m = object.__new__(Delivery)
    m.channel, m.delivery_tag = channel, 7  # type: ignore[assignment]
    nack = asyncio.create_task(m.nack(requeue=True))
    await asyncio.sleep(0)
    await channel.lose_connection()
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await asyncio.wait_for(nack, 1)
