"""A store outage longer than the queue's delivery limit can absorb parks nothing: the subscriber
holds its deliveries and retries the store instead of giving them back to the queue, which on a
quorum queue counts as a delivery each time (and past the limit the broker parks the event in the
DLQ though its handler never ran). PostgreSQL is reached through a proxy that refuses for 30 s."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from bus import Context, Router
from bus.produce.publisher import Publisher
from bus.stores.postgres import PostgresStore
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology, queue_depth, running
from tests.integration.proxy import Proxy

pytestmark = pytest.mark.rabbitmq4

POSTGRES_URL = os.environ.get("BUS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
OUTAGE = 30.0
EVENTS = 5


async def test_a_30s_store_outage_holds_deliveries_and_parks_nothing(
    amqp_url: str, prefix: str
) -> None:
    # the default crash-loop guard: x-delivery-limit 10 on the subscriber's quorum queue
    topology = make_topology(prefix, {"email": {"keys": ["order.placed"]}})
    handled: list[tuple[str, int]] = []
    router = Router()

    @router.on("order.placed")
    async def send(event: dict[str, Any], ctx: Context) -> None:
        handled.append((ctx.id, ctx.attempt))

    proxy = await Proxy("127.0.0.1", 5432).start()
    store = await PostgresStore.open(proxy.url(POSTGRES_URL))
    dlq, main = f"{prefix}.email.dlq", f"{prefix}.email"  # ids unique too: the table is shared
    try:
        async with (
            applied(amqp_url, topology),
            running(amqp_url, topology, "email", router, store=store),
        ):
            proxy.refusing = True  # PostgreSQL is gone: new connections refused,
            proxy.cut()  # the open ones dropped
            async with Publisher(amqp_url, topology) as pub:
                for i in range(EVENTS):
                    await pub.publish("order.placed", {"order_id": f"o-{i}"}, id=f"{prefix}-{i}")
            back_at = time.monotonic() + OUTAGE
            while time.monotonic() < back_at:  # the outage itself: watch that nothing parks
                assert await queue_depth(amqp_url, dlq) == 0, "the outage parked an event"
                await asyncio.sleep(1.0)
            assert handled == [], "no handler runs without its claim"
            proxy.refusing = False
            await wait_for(lambda: len(handled) == EVENTS, timeout=60,
                           message=f"{EVENTS} events handled once the store is back")  # fmt: skip
            assert sorted(handled) == [(f"{prefix}-{i}", 1) for i in range(EVENTS)], handled
            assert await queue_depth(amqp_url, dlq) == 0
            await wait_for(lambda: _empty(amqp_url, main), timeout=10, message=f"{main} drained")
    finally:
        await store.close()
        await proxy.close()


async def _empty(url: str, queue: str) -> bool:
    return await queue_depth(url, queue) == 0
