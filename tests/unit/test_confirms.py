"""`bus.produce.confirms`: publishes registered in tag order, their frames written in the same order."""

from __future__ import annotations

import asyncio
from typing import Any

from aiormq.abc import ChannelFrame

from bus.envelope import Event, encode
from bus.produce.confirms import ConfirmWriter
from tests.unit.fake_amqp import WritingChannel


class FakeChannel(WritingChannel):
    """The parts of an aiormq channel the writer uses."""

    number = 1
    max_content_size = 131_064

    def __init__(self, queue_size: int = 0) -> None:
        super().__init__(queue_size)
        self.delivery_tag = 0
        self.confirmations: dict[int, asyncio.Future[Any]] = {}
        self.message_id_delivery_tag: dict[str, int] = {}

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()


def wire(i: int) -> Any:
    return encode(Event(type="order.placed", data={"n": i}, id=f"id-{i}", source="s"))


async def frames_of(channel: FakeChannel, count: int) -> list[bytes]:
    return [(await asyncio.wait_for(channel.write_queue.get(), 1)).payload for _ in range(count)]


async def test_publishes_of_one_loop_turn_share_one_write_in_tag_order() -> None:
    channel = FakeChannel()
    writer = ConfirmWriter()
    tags = [writer.start(channel, wire(i), "ex", "order.placed")[1] for i in range(3)]  # type: ignore[arg-type]
    assert tags == [1, 2, 3] and channel.message_id_delivery_tag == {
        "id-0": 1,
        "id-1": 2,
        "id-2": 3,
    }
    assert channel.write_queue.empty(), "nothing is written before the loop turn ends"
    [payload] = await frames_of(channel, 1)
    assert payload.index(b"id-0") < payload.index(b"id-1") < payload.index(b"id-2")


async def test_a_full_write_queue_keeps_the_frames_in_order() -> None:
    channel = FakeChannel(queue_size=1)
    channel.write_queue.put_nowait(ChannelFrame(payload=b"before", should_close=False))
    writer = ConfirmWriter()
    for i in range(3):  # three loop turns, three writes, while the queue is full
        writer.start(channel, wire(i), "ex", "order.placed")  # type: ignore[arg-type]
        await asyncio.sleep(0)
    drained = asyncio.create_task(writer.drained())
    payloads = await frames_of(channel, 4)
    await asyncio.wait_for(drained, 1)
    assert payloads[0] == b"before"
    assert [b"id-0" in p for p in payloads[1:]] == [True, False, False]
    assert b"id-1" in payloads[2] and b"id-2" in payloads[3]


async def test_frames_of_a_channel_that_closed_meanwhile_are_dropped() -> None:
    channel = FakeChannel()
    writer = ConfirmWriter()
    writer.start(channel, wire(0), "ex", "order.placed")  # type: ignore[arg-type]
    channel.close_now()
    await writer.drained()
    assert channel.write_queue.empty()


async def test_forget_drops_only_its_own_message_id() -> None:
    channel = FakeChannel()
    channel.message_id_delivery_tag = {"a": 5}
    ConfirmWriter.forget(channel, "a", 4)  # type: ignore[arg-type]
    assert channel.message_id_delivery_tag == {"a": 5}, "a later publish of the same id"
    ConfirmWriter.forget(channel, "a", 5)  # type: ignore[arg-type]
    assert channel.message_id_delivery_tag == {}


async def test_frames_stuck_behind_a_closed_channels_full_queue_do_not_hold_a_new_channel() -> None:
    old = FakeChannel.full()
    writer = ConfirmWriter()
    writer.start(old, wire(0), "ex", "order.placed")  # type: ignore[arg-type]
    for _ in range(3):  # its frames wait for room that never comes: the connection died
        await asyncio.sleep(0)
    await old.lose_connection()
    new = FakeChannel()
    writer.start(new, wire(1), "ex", "order.placed")  # type: ignore[arg-type]
    [payload] = await frames_of(new, 1)
    assert b"id-1" in payload and b"id-0" not in payload
    await asyncio.wait_for(writer.drained(), 1)
