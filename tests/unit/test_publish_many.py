"""publish_many's batch control, with the network replaced by a stub `send`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bus.envelope import Event
from bus.errors import PublishTimeout
from bus.produce.publisher import Publisher
from bus.topology.model import from_dict

TOPOLOGY = from_dict(
    {
        "version": 1,
        "exchanges": {"shop.events": {"type": "topic"}},
        "events": {"order.placed": {"exchange": "shop.events"}},
        "subscribers": {},
    },
    source="test",
)


def publisher_with(send: Any) -> Publisher:
    pub = Publisher("amqp://unused", TOPOLOGY, deadline=0.3)
    pub.send = send  # type: ignore[method-assign]
    return pub


async def test_cancelling_publish_many_stops_sending_the_rest_of_the_batch() -> None:
    sent: list[str] = []

    async def send(event: Event, *, timer: bool = True) -> None:
        sent.append(event.id)
        await asyncio.sleep(0.01)

    pub = publisher_with(send)
    task = asyncio.create_task(
        pub.publish_many([("order.placed", {"n": i}) for i in range(200)], window=10)
    )
    while len(sent) < 40:  # noqa: ASYNC110 - stepping the loop until the batch is under way
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stopped_at = len(sent)
    await asyncio.sleep(0.1)
    assert len(sent) == stopped_at < 200


async def test_publish_many_times_out_only_when_nothing_is_confirmed_for_the_deadline() -> None:
    async def slow_but_moving(event: Event, *, timer: bool = True) -> None:
        await asyncio.sleep(0.05)  # 20 events one at a time: 1 s in all, > the 0.3 s deadline

    assert len(await publisher_with(slow_but_moving).publish_many(
        [("order.placed", {"n": i}) for i in range(20)], window=1
    )) == 20  # fmt: skip

    async def stuck(event: Event, *, timer: bool = True) -> None:
        await asyncio.sleep(3600)

    with pytest.raises(PublishTimeout, match="0 of 5 events confirmed"):
        await publisher_with(stuck).publish_many([("order.placed", {})] * 5)


async def test_publish_many_returns_the_id_of_each_event_in_order() -> None:
    sent: list[str] = []

    async def send(event: Event, *, timer: bool = True) -> None:
        await asyncio.sleep(0.001 * (len(sent) % 3))  # confirms come back out of order
        sent.append(event.id)

    given = Event(type="order.placed", data={}, id="given-id")
    ids = await publisher_with(send).publish_many(
        [("order.placed", {"n": 0}), given, ("order.placed", {"n": 2})], window=2
    )
    assert ids[1] == "given-id" and all(ids) and len(set(ids)) == 3
    assert sorted(ids) == sorted(sent), "every returned id is the id that was sent"
