"""Batch handlers in TestBus: list in, each item's own outcome out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from bus import Router
from bus.consume.batches import BatchContext
from bus.consume.dispatch import Ack, Duplicate
from bus.testing import TestBus
from bus.topology.model import Topology, from_dict
from tests.unit.test_dispatch import Harness


class Placed(BaseModel):
    order_id: str


calls: list[list[str]] = []
router = Router()


@router.on("order.placed", batch=3, flush="1s")
async def insert(events: list[Placed], ctx: BatchContext) -> None:
    calls.append([e.order_id for e in events])
    if any(e.order_id == "boom" for e in events) and min(c.attempt for c in ctx.contexts) == 1:
        raise ConnectionError("database away")
    for i, e in enumerate(events):
        if e.order_id.startswith("bad"):
            ctx.reject(i, f"{e.order_id} is not an order")


def topology() -> Topology:
    return from_dict(
        {
            "version": 1,
            "defaults": {"retry": {"delays": ["1m"]}},
            "exchanges": {"events": {}},
            "events": {"order.placed": {"exchange": "events"}},
            "subscribers": {"sink": {"handlers": "tests.unit.test_batches:router",
                                     "bindings": [{"exchange": "events", "keys": ["order.placed"]}]}},
        }
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _clear() -> None:
    calls.clear()


async def test_a_batch_handler_gets_full_batches_then_the_rest_parsed_as_its_item_type() -> None:
    async with TestBus(topology(), routers={"sink": router}) as tb:
        for i in range(7):
            await tb.publish("order.placed", {"order_id": f"o-{i}"}, id=f"e-{i}")
        await tb.settle()
        assert calls == [["o-0", "o-1", "o-2"], ["o-3", "o-4", "o-5"], ["o-6"]]
        assert sorted(h.id for h in tb.handled("sink")) == [f"e-{i}" for i in range(7)]


async def test_when_a_batch_raises_each_event_takes_its_own_way_down_the_ladder() -> None:
    async with TestBus(topology(), routers={"sink": router}) as tb:
        await tb.publish("order.placed", {"order_id": "boom"}, id="b-1")
        await tb.publish("order.placed", {"order_id": "fine"}, id="b-2")
        await tb.settle()
        assert calls == [["boom", "fine"], ["boom", "fine"]]
        assert sorted((h.id, h.attempt) for h in tb.handled("sink")) == [("b-1", 2), ("b-2", 2)]
        assert tb.now == 60


async def test_a_batch_handler_rejects_single_items_and_the_rest_are_acked() -> None:
    async with TestBus(topology(), routers={"sink": router}) as tb:
        for oid in ("a", "bad-1", "c"):
            await tb.publish("order.placed", {"order_id": oid}, id=f"r-{oid}")
        await tb.settle()
        (parked,) = tb.parked("sink")
        assert (parked.id, parked.reason) == ("r-bad-1", "rejected")
        assert parked.headers["bus-exception-message"] == "bad-1 is not an order"
        assert sorted(h.id for h in tb.handled("sink")) == ["r-a", "r-c"]


async def test_a_duplicate_never_joins_a_batch() -> None:
    async with TestBus(topology(), routers={"sink": router}) as tb:
        await tb.publish("order.placed", {"order_id": "x"}, id="d-1")
        await tb.settle()
        await tb.publish("order.placed", {"order_id": "x"}, id="d-1")
        await tb.settle()
        assert calls == [["x"]] and tb.duplicates("sink") == ["d-1"]


async def test_the_same_id_twice_before_its_batch_ran_is_handled_once_and_a_duplicate() -> None:
    async with TestBus(topology(), routers={"sink": router}) as tb:
        await tb.publish("order.placed", {"order_id": "x"}, id="d-1")
        await tb.publish("order.placed", {"order_id": "x"}, id="d-1")  # before the batch ran
        await asyncio.wait_for(tb.settle(), 5)  # on the broker: the flush, then a duplicate
        assert calls == [["x"]]
        assert [h.id for h in tb.handled("sink")] == ["d-1"]
        assert tb.duplicates("sink") == ["d-1"]


def rows_router(size: int, ran: list[int], gate: asyncio.Event | None = None) -> Router:
    r = Router()

    @r.on("order.placed", batch=size, flush="60s")
    async def rows(events: list[Any], ctx: BatchContext) -> None:
        ran.append(len(events))
        if gate is not None:
            await gate.wait()

    return r


async def cut_off(delivery: asyncio.Task[Any]) -> None:
    """What aiormq does to a delivery's task when its channel closes."""
    await asyncio.sleep(0.05)
    delivery.cancel()
    await asyncio.gather(delivery, return_exceptions=True)


async def test_a_delivery_cut_off_while_its_batch_waits_leaves_it_and_the_redelivery_runs() -> None:
    ran: list[int] = []
    run = Harness(rows_router(10, ran))
    await cut_off(asyncio.create_task(run()))
    assert run.dispatcher.batch_waiting == 0, "out of the batch: the broker redelivers it"
    redelivery = asyncio.create_task(run())
    await asyncio.sleep(0.05)
    run.dispatcher.flush_batches()
    assert isinstance(await asyncio.wait_for(redelivery, 5), Ack)
    assert ran == [1]


async def test_a_delivery_cut_off_while_its_batch_runs_holds_the_redelivery_off_until_it_ends(
) -> None:  # fmt: skip
    ran: list[int] = []
    gate = asyncio.Event()
    run = Harness(rows_router(1, ran, gate))  # a batch of one runs at once
    await cut_off(asyncio.create_task(run()))  # the handler goes on with its event
    redelivery = asyncio.create_task(run())
    await asyncio.sleep(0.3)
    assert not redelivery.done() and ran == [1], "never a second run beside the first"
    gate.set()
    assert isinstance(await asyncio.wait_for(redelivery, 5), Duplicate)
    assert ran == [1]


def test_a_batch_handler_is_an_async_def_taking_a_list() -> None:
    r = Router()

    def sync(events: list[Any], ctx: Any) -> None: ...

    async def one(event: dict[str, Any], ctx: Any) -> None: ...

    with pytest.raises(TypeError, match="a batch handler is an `async def`"):
        r.on("a", batch=10)(sync)
    with pytest.raises(TypeError, match=r"must take \(events: list\[T\], ctx\)"):
        r.on("a", batch=10)(one)
    with pytest.raises(TypeError, match=r"flush .* is not a duration"):
        r.on("a", batch=10, flush="soon")(insert)
    assert r.largest_batch == 0
    assert router.largest_batch == 3
