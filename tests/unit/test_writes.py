"""`bus.amqp.writes.written`: a write waiting for room in a dead connection's write queue ends
when its channel closes, instead of waiting for ever."""

from __future__ import annotations

import asyncio
from functools import partial

import aiormq
import pytest

from bus.amqp.delivery import Delivery
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
    await channel.lose_connection()
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await asyncio.wait_for(write, 1)
    await asyncio.sleep(0)
    assert channel.write_queue.qsize() == 1  # the late frame was dropped, not queued


async def test_a_write_on_a_channel_already_closed_with_a_full_queue_fails_at_once() -> None:
    channel = WritingChannel(queue_size=1)
    channel.write_queue.put_nowait("never drained")
    await channel.lose_connection()
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await asyncio.wait_for(written(channel, partial(channel.write_queue.put, "late")), 1)  # type: ignore[arg-type]
    assert channel.is_closed, "only observed, never closed or reopened by the write"


async def test_a_nack_waiting_in_a_dead_connections_full_queue_ends_with_its_channel() -> None:
    channel = WritingChannel(queue_size=1)
    channel.write_queue.put_nowait("never drained")
    m = object.__new__(Delivery)
    m.channel, m.delivery_tag = channel, 7  # type: ignore[assignment]
    nack = asyncio.create_task(m.nack(requeue=True))
    await asyncio.sleep(0)
    await channel.lose_connection()
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await asyncio.wait_for(nack, 1)
