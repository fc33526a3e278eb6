"""Batch handlers on the real broker: full batches, a partial one on its flush, each item's fate."""

from __future__ import annotations

from typing import Any

import pytest

from bus import BatchContext, Publisher, Router
from bus.consume.runtime import Runtime
from bus.stores import MemoryStore
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology, queue_depth

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)


async def test_queued_events_arrive_in_full_batches_then_a_partial_one_after_its_flush(
    amqp_url: str, prefix: str
) -> None:
    topology = make_topology(prefix, {"sink": {"keys": ["order.placed"]}})
    sizes: list[int] = []
    router = Router()

    @router.on("order.placed", batch=50, flush="300ms")
    async def insert(events: list[dict[str, Any]], ctx: BatchContext) -> None:
        sizes.append(len(events))

    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        await pub.publish_many([("order.placed", {"order_id": f"o-{i}"}) for i in range(120)])
        rt = Runtime(topology, "sink", router, url=amqp_url, store=MemoryStore())
        await rt.start()  # the prefetch (16) is raised to the batch (50)
        try:
            await wait_for(lambda: sum(sizes) == 120, timeout=10, message="120 events handled")
            await wait_for(lambda: _empty(amqp_url, f"{prefix}.sink"), message="all acked")
        finally:
            await rt.stop(5)
    assert sizes == [50, 50, 20], sizes


async def _empty(url: str, queue: str) -> bool:
    return await queue_depth(url, queue) == 0


async def test_a_failing_batch_sends_each_event_down_its_own_ladder_and_rejects_park_alone(
    amqp_url: str, prefix: str
) -> None:
    topology = make_topology(prefix, {"sink": {"keys": ["order.placed"]}})
    calls: list[list[tuple[str, int]]] = []
    router = Router()

    @router.on("order.placed", batch=10, flush="200ms")
    async def insert(events: list[dict[str, Any]], ctx: BatchContext) -> None:
        calls.append(
            [(e["order_id"], c.attempt) for e, c in zip(events, ctx.contexts, strict=True)]
        )
        if len(calls) == 1:
            raise ConnectionError("database away")
        for i, e in enumerate(events):
            if e["order_id"] == "bad":
                ctx.reject(i, "not an order")

    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        rt = Runtime(topology, "sink", router, url=amqp_url, store=MemoryStore())
        await rt.start()
        try:
            for oid in ("a", "bad", "c"):
                await pub.publish("order.placed", {"order_id": oid}, id=f"id-{oid}")
            await wait_for(lambda: _depth(amqp_url, f"{prefix}.sink.dlq", 1), timeout=10,
                           message="the rejected event in the DLQ")  # fmt: skip
        finally:
            await rt.stop(5)
    assert sorted(calls[0]) == [("a", 1), ("bad", 1), ("c", 1)]
    assert sorted(x for call in calls[1:] for x in call) == [("a", 2), ("bad", 2), ("c", 2)]


async def _depth(url: str, queue: str, n: int) -> bool:
    return await queue_depth(url, queue) == n
