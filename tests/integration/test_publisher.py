"""Publisher behaviour that needs a real broker and a misbehaving network."""

from __future__ import annotations

import asyncio
import time

import pytest

from bus.errors import PublishTimeout
from bus.produce.publisher import Publisher
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology, queue_depth
from tests.integration.proxy import Proxy


async def test_publish_many_gives_up_when_the_broker_stops_confirming_then_recovers(
    amqp_url: str, prefix: str
) -> None:
    topology = make_topology(prefix, {"sink": {"keys": ["order.placed"]}})
    proxy = await Proxy().start()
    events = [("order.placed", {"order_id": f"o-{i}"}) for i in range(200)]
    try:
        async with (
            applied(amqp_url, topology),
            Publisher(proxy.url(amqp_url), topology, deadline=1.5) as pub,
        ):
            await pub.publish_many(events[:10])
            proxy.stall()
            started = time.monotonic()
            with pytest.raises(PublishTimeout, match="no answer from the broker for 2s"):
                await pub.publish_many(events)
            waited = time.monotonic() - started
            assert 1.5 <= waited < 4.0, f"gave up after {waited:.1f}s for a 1.5s deadline"

            proxy.resume()
            ids = await pub.publish_many(events[:20])
            assert len(ids) == 20
            # what the stalled batch sent may have arrived too: at least the confirmed ones did
            assert await queue_depth(amqp_url, f"{prefix}.sink") >= 30
    finally:
        await proxy.close()


async def test_a_connection_that_stops_confirming_is_replaced_and_the_events_sent_again(
    amqp_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No confirm for `stall` seconds while the connection stays up and unblocked (a RabbitMQ
    3.10 channel publishing to a dead quorum leader, tests/integration/test_cluster.py): the
    publisher drops the connection, the robust one comes back, the events go again."""
    topology = make_topology(prefix, {"sink": {"keys": ["order.placed"]}})
    proxy = await Proxy().start()
    events = [("order.placed", {"order_id": f"o-{i}"}) for i in range(200)]
    try:
        async with (
            applied(amqp_url, topology),
            Publisher(proxy.url(amqp_url), topology, deadline=30, stall=1.0) as pub,
        ):
            await pub.publish_many(events[:10])
            proxy.stall()
            started = time.monotonic()
            batch = asyncio.create_task(pub.publish_many(events))
            await wait_for(lambda: pub.stalls == 1, timeout=10, message="the stall noticed")
            noticed = time.monotonic() - started
            proxy.resume()  # the next connection flows (the stalled one is gone)
            ids = await asyncio.wait_for(batch, 20)
            assert len(ids) == 200 and pub.stalls == 1
            assert 1.0 <= noticed < 3.0, f"the stall was noticed after {noticed:.1f}s"
            assert any("no confirm from RabbitMQ" in r.getMessage() for r in caplog.records)
            assert await queue_depth(amqp_url, f"{prefix}.sink") >= 210
    finally:
        await proxy.close()
