"""The runtime consumes on aiormq's channel directly (bus.consume.consumer): it must come back by itself
after the broker cancels its consumer, and deliver aiormq frames as the handler expects."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bus import Context, Router
from bus.amqp.connection import connect_plain
from bus.consume.runtime import Runtime
from bus.produce.publisher import Publisher
from bus.stores import MemoryStore
from tests.conftest import wait_for
from tests.integration.helpers import applied, apply_topology, make_topology, running

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)


async def test_a_consumer_cancelled_by_the_broker_consumes_again_once_the_queue_is_back(
    amqp_url: str, prefix: str
) -> None:
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"]}}, queue_type="classic")
    seen: list[tuple[str, str, str | None]] = []
    router = Router()

    @router.on("order.placed")
    async def record(event: dict[str, Any], ctx: Context) -> None:
        seen.append((ctx.id, ctx.routing_key, ctx.meta.correlation_id))

    async with (
        applied(amqp_url, topology),
        running(amqp_url, topology, "svc", router) as rt,
        Publisher(amqp_url, topology) as pub,
    ):
        await pub.publish("order.placed", {"order_id": "o-1"}, id="e-1", correlation_id="c-1")
        await wait_for(lambda: len(seen) == 1, message="the first event")
        assert seen == [("e-1", "order.placed", "c-1")]

        await delete_queue(amqp_url, f"{prefix}.svc")  # an operator deletes it under us
        await wait_for(lambda: not rt.ready, message="not ready while the queue is gone")

        await apply_topology(amqp_url, topology)  # and applies the topology again
        await wait_for(lambda: rt.ready, timeout=15, message="consuming again")
        await pub.publish("order.placed", {"order_id": "o-2"}, id="e-2")
        await wait_for(lambda: len(seen) == 2, timeout=10, message="the event after the gap")
        assert seen[1][0] == "e-2"


async def test_a_runtime_waiting_for_its_deleted_queue_stops_promptly(
    amqp_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"]}}, queue_type="classic")
    async with applied(amqp_url, topology):
        rt = Runtime(topology, "svc", Router(), url=amqp_url, store=MemoryStore())
        await rt.start()
        await delete_queue(amqp_url, f"{prefix}.svc")
        await wait_for(lambda: not rt.ready, message="not ready while the queue is gone")
        await wait_for(lambda: "cannot consume" in caplog.text, message="a failed re-consume")
        started = time.monotonic()
        assert await rt.stop(5), "nothing was running: the drain must succeed"
        assert time.monotonic() - started < 3


async def delete_queue(url: str, queue: str) -> None:
    conn = await connect_plain(url)
    try:
        channel = await conn.channel()
        await channel.queue_delete(queue)
    finally:
        await conn.close()
