"""Delayed events survive a broker restart: on a private node the test starts
(tests/integration/nodes.py), never on the machine's own broker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bus import Context, Publisher, Router
from bus.consume.runtime import Runtime
from bus.stores import MemoryStore
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)


@pytest.fixture
def node(private_node: Any) -> Any:
    return private_node


@pytest.mark.slow
async def test_a_delayed_event_survives_a_restart_of_the_broker_holding_it(
    node: Any, prefix: str
) -> None:
    url = node.url()
    topology = make_topology(prefix, {"email": {"keys": ["order.placed"]}})
    arrived: dict[str, float] = {}
    router = Router()

    @router.on("order.placed")
    async def placed(event: dict[str, Any], ctx: Context) -> None:
        arrived[ctx.id] = time.monotonic()

    async with applied(url, topology):
        async with Publisher(url, topology) as pub:
            sent = time.monotonic()
            await pub.publish("order.placed", {"order_id": "o-r"}, id="r-1", delay="20s")
        await asyncio.to_thread(node.stop)  # the whole node, while the broker holds the event
        node.start()
        await asyncio.to_thread(node.wait_started)
        rt = Runtime(topology, "email", router, url=url, store=MemoryStore())
        await rt.start()
        try:
            await wait_for(lambda: "r-1" in arrived, timeout=60,
                           message="the delayed event after the restart")  # fmt: skip
        finally:
            await rt.stop(5)
    assert arrived["r-1"] - sent >= 20.0, "it came before its delay"
