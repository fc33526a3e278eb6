"""Acker: coalesced acks, and deliveries of a channel that died under a running handler."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from bus.consume.acks import Acker
from tests.unit.fake_amqp import WritingChannel


class FakeChannel:
    def __init__(self) -> None:
        self.is_closed = False
        self.acks: list[tuple[int, bool]] = []

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        if self.is_closed:
            raise RuntimeError("channel closed")
        self.acks.append((delivery_tag, multiple))


def delivery(channel: FakeChannel, tag: int) -> Any:
    return SimpleNamespace(channel=channel, delivery_tag=tag)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_in_order_acks_are_coalesced_into_one_multiple_frame() -> None:
    ch, acker = FakeChannel(), Acker()
    ms = [delivery(ch, t) for t in (1, 2, 3)]
    for m in ms:
        acker.delivered(m)
    for m in ms:
        acker.ack(m)
    await acker.drain()
    assert ch.acks == [(3, True)]


async def test_a_handler_completing_after_its_channel_died_does_not_raise() -> None:
    """After a reconnect the old channel's state is dropped; its late handler's ack must be a
    quiet no-op (the broker redelivers; the store absorbs), not a RuntimeError."""
    old, acker = FakeChannel(), Acker()
    slow, quick = delivery(old, 1), delivery(old, 2)
    acker.delivered(slow)
    acker.delivered(quick)
    old.is_closed = True  # the connection dropped
    acker.ack(quick)  # a flush now drops the dead channel's state
    await acker.drain()
    await settle()
    acker.ack(slow)  # the slow handler of the old channel completes
    await acker.drain()
    assert old.acks == []
    new = FakeChannel()
    m = delivery(new, 1)
    acker.delivered(m)
    acker.ack(m)
    await acker.drain()
    assert new.acks == [(1, True)], "the new channel is acked as usual"


async def test_while_handlers_run_acks_gather_until_a_batch_is_complete() -> None:
    ch, acker = FakeChannel(), Acker(batch=3, hold=10.0)
    ms = [delivery(ch, t) for t in (1, 2, 3, 4)]
    for m in ms:
        acker.delivered(m)
    acker.ack(ms[0])
    acker.ack(ms[1])
    await settle()
    assert ch.acks == [], "two of a batch of three: held"
    acker.ack(ms[2])
    await settle()
    assert ch.acks == [(3, True)], "the third completes the batch: one frame"


async def test_a_held_ack_goes_out_after_the_hold_even_behind_a_slow_handler() -> None:
    ch, acker = FakeChannel(), Acker(batch=8, hold=0.01)
    quick, slow = delivery(ch, 1), delivery(ch, 2)
    acker.delivered(quick)
    acker.delivered(slow)
    acker.ack(quick)
    await settle()
    assert ch.acks == []
    await asyncio.sleep(0.05)
    assert ch.acks == [(1, True)], "held no longer than the hold"


async def test_an_ack_waiting_in_a_dead_connections_full_queue_does_not_hold_later_acks() -> None:
    """The connection died with its write queue full: the ack waiting for room there must give
    up when its channel closes, or every later ack waits behind it and consuming stops."""
    old, acker = WritingChannel.full(), Acker()
    stuck = delivery(old, 1)  # type: ignore[arg-type]
    acker.delivered(stuck)
    acker.ack(stuck)
    await settle()  # its ack waits for room
    await old.lose_connection()
    new = WritingChannel()
    m = delivery(new, 1)  # type: ignore[arg-type]
    acker.delivered(m)
    acker.ack(m)
    await asyncio.wait_for(acker.drain(), 1)
    assert new.write_queue.get_nowait() == ("ack", 1, True)
