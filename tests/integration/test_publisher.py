"""Publisher behaviour that needs a real broker and a misbehaving network."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from bus.envelope import Event
from bus.errors import PublishError, PublishTimeout, UnroutableError
from bus.produce.publisher import Publisher
from tests.conftest import wait_for
from tests.integration.helpers import applied, get_all, make_topology, queue_depth
from tests.integration.proxy import Proxy

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)


async def test_publish_many_gives_up_when_the_broker_stops_confirming_then_recovers(
    amqp_url: str, prefix: str
) -> None:
    topology = make_topology(prefix, {"sink": {"keys": ["order.placed"]}})
    proxy = await Proxy.to(amqp_url).start()
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


async def test_publish_many_writes_each_event_in_the_wire_format_in_order(
    amqp_url: str, prefix: str
) -> None:
    """The batched frames (`bus.produce.frames`, `bus.produce.confirms`) as a consumer reads them."""
    topology = make_topology(prefix, {"sink": {"keys": ["order.*"]}})
    given = Event(type="order.shipped", data={"é": [1, 2.5, None]}, id="given-1", source="api",
                  correlation_id="corr-1", causation_id="cause-1", traceparent=None)  # fmt: skip
    events = [("order.placed", {"order_id": f"o-{i}"}) for i in range(300)]
    async with applied(amqp_url, topology), Publisher(amqp_url, topology, source="shop") as pub:
        ids = await pub.publish_many([*events[:150], given, *events[150:]], window=64)
        got = await get_all(amqp_url, f"{prefix}.sink")
    assert [m.message_id for m in got] == ids, "every event once, in the order given"
    first, special = got[0], got[150]
    assert json.loads(first.body) == {"order_id": "o-0"}
    assert (first.type, first.app_id, first.content_type, first.delivery_mode) == (
        "order.placed", "shop", "application/json", 2,
    )  # fmt: skip
    assert first.timestamp is not None and abs(first.timestamp.timestamp() - time.time()) < 60
    headers = {k: v for k, v in (first.headers or {}).items() if not k.startswith("x-")}
    assert headers.pop("traceparent").startswith("00-")
    assert headers.pop("cloudEvents_time").endswith("Z")
    assert headers == {"cloudEvents_specversion": "1.0", "cloudEvents_id": ids[0],
                       "cloudEvents_source": "shop", "cloudEvents_type": "order.placed"}  # fmt: skip
    assert (special.message_id, special.correlation_id, special.app_id) == (
        "given-1",
        "corr-1",
        "api",
    )
    assert json.loads(special.body) == {"é": [1, 2.5, None]}
    assert (special.headers or {})["bus-causation-id"] == "cause-1"


async def test_publish_many_of_an_unbound_type_fails_as_unroutable(
    amqp_url: str, prefix: str
) -> None:
    topology = make_topology(prefix, {"sink": {"keys": ["order.placed"]}})
    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        with pytest.raises(PublishError, match="3 of 5 events were not confirmed") as caught:
            await pub.publish_many(
                [("order.placed", {"order_id": "a"}), ("order.shipped", {}), ("order.shipped", {}),
                 ("order.shipped", {}), ("order.placed", {"order_id": "b"})]
            )  # fmt: skip
        assert isinstance(caught.value.__cause__, UnroutableError)
        assert len(await pub.publish_many([("order.placed", {"order_id": "c"})])) == 1
    # the channel is still good: the next batch went through


async def test_publish_many_confirms_every_event_across_a_cut_connection(
    amqp_url: str, prefix: str
) -> None:
    topology = make_topology(prefix, {"sink": {"keys": ["order.placed"]}})
    proxy = await Proxy.to(amqp_url).start()
    n = 3000
    try:
        async with (
            applied(amqp_url, topology),
            Publisher(proxy.url(amqp_url), topology, deadline=30) as pub,
        ):
            batch = asyncio.create_task(
                pub.publish_many(
                    [("order.placed", {"order_id": f"o-{i}"}) for i in range(n)], window=200
                )
            )
            await asyncio.sleep(0.3)
            assert proxy.cut(), "the cut must land while the batch is in flight"
            ids = await asyncio.wait_for(batch, 60)
            assert len(set(ids)) == n
            got = {m.message_id for m in await get_all(amqp_url, f"{prefix}.sink")}
            assert set(ids) <= got, f"{len(set(ids) - got)} confirmed events are missing"
    finally:
        await proxy.close()


async def test_a_connection_that_stops_confirming_is_replaced_and_the_events_sent_again(
    amqp_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No confirm for `stall` seconds while the connection stays up and unblocked (a RabbitMQ
    3.10 channel publishing to a dead quorum leader, tests/integration/test_cluster.py): the
    publisher drops the connection, the robust one comes back, the events go again."""
    topology = make_topology(prefix, {"sink": {"keys": ["order.placed"]}})
    proxy = await Proxy.to(amqp_url).start()
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
