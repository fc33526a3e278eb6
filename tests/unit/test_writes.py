"""`bus.amqp.writes.written`: a write waiting for room in a dead connection's write queue ends
when its channel closes, instead of waiting for ever."""

from __future__ import annotations

import asyncio
from functools import partial

import aiormq
import pytest

from bus.amqp.writes import written
from tests.unit.fake_amqp import WritingChannel


async def test_a_write_with_room_goes_straight_into_the_queue() -> None:
    channel = WritingChannel(queue_size=2)
    await written(channel, partial(channel.write_queue.put, "frame"))  # type: ignore[arg-type]
    assert channel.write_queue.get_nowait() == "frame"


async def test_a_write_waiting_for_room_gets_it_when_the_writer_takes_a_frame() -> None:
    channel = WritingChannel(queue_size=1)
    channel.write_queue.put_nowait("first")
    write = asyncio.create_task(written(channel, partial(channel.write_queue.put, "second")))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert channel.write_queue.get_nowait() == "first"  # the connection's writer takes one
    await asyncio.wait_for(write, 1)
    assert channel.write_queue.get_nowait() == "second"


async def test_a_write_waiting_for_room_ends_when_its_channel_closes() -> None:
    channel = WritingChannel(queue_size=1)
    channel.write_queue.put_nowait("never drained")
    write = asyncio.create_task(written(channel, partial(channel.write_queue.put, "late")))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert not write.done()
    channel.close()  # the connection died
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await asyncio.wait_for(write, 1)
    await asyncio.sleep(0)
    assert channel.write_queue.qsize() == 1  # the late frame was dropped, not queued
