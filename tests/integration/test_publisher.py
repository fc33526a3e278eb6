"""Publisher behaviour that needs a real broker and a misbehaving network."""

from __future__ import annotations

import time

import pytest

from bus.errors import PublishTimeout
from bus.produce.publisher import Publisher
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
