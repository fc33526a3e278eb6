"""`partitioner: exchange`: the broker routes an ordered subscriber's events straight to their
partitions by the `bus-partition-<N>` header the bus's producers stamp (a hop saved), and what it
cannot route reaches them through the subscriber's queue; and the moves of the bus's own
partitioner that the broker refuses."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aio_pika
import pytest

from bus.amqp.connection import connect_plain
from bus.produce.publisher import Publisher
from bus.topology.apply import queue_depth as applier_depth
from bus.topology.ordering import partition_of
from tests.conftest import wait_for
from tests.integration.helpers import (
    applied,
    apply_topology,
    delete_topology,
    queue_depth,
    running,
)
from tests.integration.test_ordering import Recorder, ordered_topology

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

never = lambda e, c: False  # noqa: E731  # a handler that always succeeds


async def exchange_exists(url: str, name: str) -> bool:
    conn = await connect_plain(url)
    try:
        channel = await conn.channel()
        try:
            await channel.declare_exchange(name, passive=True)
            return True
        except Exception:
            return False
    finally:
        await conn.close()


async def test_the_exchange_routes_each_event_to_its_keys_partition_without_the_queue(
    amqp_url: str, prefix: str
) -> None:
    topology = ordered_topology(prefix, delays=["200ms"], partitioner="exchange")
    q = f"{prefix}.fulfillment"
    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        await pub.publish_many(
            [("order.placed", {"order_id": f"o-{k}", "seq": 0, "n": k}) for k in range(40)]
        )
        depths = [await queue_depth(amqp_url, f"{q}.p{i}") for i in range(4)]
        assert await queue_depth(amqp_url, q) == 0, "nothing passes through the subscriber's queue"
        expected = [sum(1 for k in range(40) if partition_of(f"o-{k}", 4) == i) for i in range(4)]
        assert depths == expected, "each in the partition of its key, as the bus hashes it"
    for name in (f"{q}.partitions", f"{q}.unrouted"):
        assert not await exchange_exists(amqp_url, name)


async def test_what_the_exchange_cannot_route_reaches_its_partition_through_the_queue(
    amqp_url: str, prefix: str
) -> None:
    """A foreign producer that sets `bus-key` only, and a producer whose file says 8 partitions
    where the subscriber has 4: both go round through `Q`, and every event is handled."""
    topology = ordered_topology(prefix, delays=["200ms"], partitioner="exchange")
    stale = ordered_topology(prefix, delays=["200ms"], partitions=8, partitioner="exchange")
    rec = Recorder()
    async with (
        applied(amqp_url, topology),
        running(amqp_url, topology, "fulfillment", rec.router("a", never)),
        Publisher(amqp_url, stale) as pub,
    ):
        await pub.publish("order.placed", {"order_id": "o-1", "seq": 0, "n": 1})
        conn = await aio_pika.connect(amqp_url)
        try:
            channel = await conn.channel()
            exchange = await channel.get_exchange(f"{prefix}.events")
            body = json.dumps({"order_id": "o-1", "seq": 1, "n": 2}).encode()
            await exchange.publish(
                aio_pika.Message(body, message_id="foreign-1", type="order.cancelled",
                                 content_type="application/json", headers={"bus-key": "o-1"}),
                routing_key="order.cancelled",
            )  # fmt: skip
        finally:
            await conn.close()
        await wait_for(lambda: rec.ok_count() == 2, message="both handled")
    assert rec.handled() == {"o-1": [0, 1]}


async def test_switching_the_partitioner_waits_for_the_queues_to_drain_and_reroutes_the_events(
    amqp_url: str, prefix: str
) -> None:
    from bus.cli.topology import _plan
    from bus.errors import BusError
    from bus.topology.diff import Action

    url = amqp_url
    by_bus = ordered_topology(prefix, delays=["200ms"])
    by_exchange = ordered_topology(prefix, delays=["200ms"], partitioner="exchange")
    q = f"{prefix}.fulfillment"
    rec = Recorder()
    await apply_topology(url, by_bus)
    try:
        async with Publisher(url, by_bus) as pub:
            await pub.publish("order.placed", {"order_id": "o-1", "seq": 0, "n": 1})
            with pytest.raises(BusError, match=rf"the partitioner of fulfillment changes bus -> "
                                               rf"exchange .*{q} \(1\)"):  # fmt: skip
                await _plan(url, by_exchange, prune=False, execute=True)
            assert not await exchange_exists(url, f"{q}.partitions"), "nothing made"
            async with running(url, by_bus, "fulfillment", rec.router("a", never)):
                await wait_for(lambda: rec.ok_count() == 1, message="drained")
        steps, _ = await _plan(url, by_exchange, prune=False, execute=True)
        done = {(x.action, x.decl.key) for x in steps}
        assert (Action.CREATE, f"exchange {q}.partitions") in done
        assert (Action.DELETE, f"binding {prefix}.events -> {q} [order.*]") in done, done
        async with Publisher(url, by_exchange) as pub:
            await pub.publish("order.placed", {"order_id": "o-2", "seq": 0, "n": 2})
            assert await queue_depth(url, q) == 0, "the queue is no longer bound"
            async with running(url, by_exchange, "fulfillment", rec.router("a", never)):
                await wait_for(lambda: rec.ok_count() == 2, message="handled via the exchange")
        steps, _ = await _plan(url, by_bus, prune=False, execute=True)  # and back
        done = {(x.action, x.decl.key) for x in steps}
        assert (Action.DELETE, f"exchange {q}.partitions") in done, done
        assert not await exchange_exists(url, f"{q}.partitions")
        async with Publisher(url, by_bus) as pub:
            await pub.publish("order.placed", {"order_id": "o-3", "seq": 0, "n": 3})
        assert await queue_depth(url, q) == 1, "bound to the queue again"
    finally:
        await delete_topology(url, by_exchange)
        await delete_topology(url, by_bus)


async def test_more_partitions_behind_the_exchange_rebind_them_by_the_new_count(
    amqp_url: str, prefix: str
) -> None:
    four = ordered_topology(prefix, delays=["200ms"], partitioner="exchange")
    eight = ordered_topology(prefix, delays=["200ms"], partitions=8, partitioner="exchange")
    q = f"{prefix}.fulfillment"
    await apply_topology(amqp_url, four)
    try:
        await apply_topology(amqp_url, eight)  # the subscriber holds no events
        async with Publisher(amqp_url, eight) as pub:
            await pub.publish_many(
                [("order.placed", {"order_id": f"o-{k}", "seq": 0, "n": k}) for k in range(40)]
            )
        depths = [await queue_depth(amqp_url, f"{q}.p{i}") for i in range(8)]
        expected = [sum(1 for k in range(40) if partition_of(f"o-{k}", 8) == i) for i in range(8)]
        assert depths == expected, "no partition still bound by the count of 4"
        assert await queue_depth(amqp_url, q) == 0
    finally:
        await delete_topology(amqp_url, eight)


async def test_a_move_the_broker_refuses_leaves_the_event_in_the_queue(
    amqp_url: str, prefix: str
) -> None:
    """Partitions that refuse every message (a length limit of 0 with reject-publish): the
    partitioner's moves are nacked, and the events stay in the subscriber's queue until the
    partitions take them again, then run in order."""
    topology = ordered_topology(prefix, delays=["200ms"], partitions=2)
    q = f"{prefix}.fulfillment"
    rec = Recorder()
    refusing = {"x-max-length": 0, "x-overflow": "reject-publish",
                "x-single-active-consumer": True}  # fmt: skip
    events = [("order.placed", {"order_id": f"o-{k % 3}", "seq": k // 3, "n": k})
              for k in range(9)]  # fmt: skip
    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        conn = await connect_plain(amqp_url)
        try:
            channel = await conn.channel()
            raw = await channel.get_underlay_channel()
            for i in range(2):
                await raw.queue_delete(f"{q}.p{i}")
                await channel.declare_queue(f"{q}.p{i}", durable=True, arguments=refusing)
        finally:
            await conn.close()
        async with running(amqp_url, topology, "fulfillment", rec.router("a", never)):
            await pub.publish_many(events)
            await asyncio.sleep(3)  # the partitioner tries, is refused, tries again
            assert rec.ok_count() == 0
        assert await queue_depth(amqp_url, q) == 9, "every refused event is back in the queue"
        conn = await connect_plain(amqp_url)
        try:
            raw = await (await conn.channel()).get_underlay_channel()
            for i in range(2):
                await raw.queue_delete(f"{q}.p{i}")
        finally:
            await conn.close()
        await apply_topology(amqp_url, topology)  # the partitions as they should be
        async with running(amqp_url, topology, "fulfillment", rec.router("a", never)):
            await wait_for(lambda: rec.ok_count() == 9, message="all handled once accepted")
    assert rec.handled() == {f"o-{k}": [0, 1, 2] for k in range(3)}


async def where_keys_go(url: str, topology: Any, queue: str, keys: list[str]) -> dict[str, str]:
    """Publish one event per key, then read each partition: key -> the partition it reached."""
    async with Publisher(url, topology) as pub:
        await pub.publish_many([("order.placed", {"order_id": k, "seq": 0, "n": 0}) for k in keys])
    found: dict[str, str] = {}
    conn = await connect_plain(url)
    try:
        channel = await conn.channel()
        for i in range(topology.subscriber("fulfillment").partitions):
            # read by consuming: a single-active-consumer quorum queue refuses basic.get
            q = await channel.declare_queue(f"{queue}.p{i}", passive=True)
            depth = q.declaration_result.message_count or 0
            if not depth:
                continue
            async with asyncio.timeout(30), q.iterator(no_ack=True) as messages:
                async for m in messages:
                    found[str(m.headers["bus-key"])] = f"p{i}"
                    depth -= 1
                    if not depth:
                        break
    finally:
        await conn.close()
    return found


@pytest.mark.timeout(300)
async def test_a_keys_partition_behind_the_exchange_survives_a_broker_restart(
    nodes: Any, prefix: str
) -> None:
    """The routing is the broker's matching of a header against each partition's binding, not
    a ring the broker rebuilds at boot (RabbitMQ's consistent-hash exchange may deal keys to
    other queues after a restart): grown from 4 to 12 partitions, every key reaches the
    partition it reached before."""
    node = nodes.new(f"ring-{prefix[-4:]}")
    nodes.start([node])
    try:
        url = node.url()
        topology = ordered_topology(prefix, delays=["200ms"], partitions=12,
                                    partitioner="exchange")  # fmt: skip
        q = f"{prefix}.fulfillment"
        keys = [f"o-{i}" for i in range(120)]
        await apply_topology(
            url, ordered_topology(prefix, delays=["200ms"], partitioner="exchange")
        )
        await apply_topology(url, topology)
        before = await where_keys_go(url, topology, q, keys)
        assert before == {k: f"p{partition_of(k, 12)}" for k in keys}
        node.stop()
        nodes.start([node])
        after = await where_keys_go(url, topology, q, keys)
        assert after == before, "keys changed partition across the restart"
    finally:
        node.kill()


async def test_apply_refuses_a_partition_exchange_that_differs_from_the_file(
    amqp_url: str, prefix: str
) -> None:
    """Left alone, apply would bind the subscriber to the exchange it cannot use and take the
    bindings off its queue: the subscriber would receive nothing."""
    from bus.cli.topology import _plan
    from bus.errors import BusError

    topology = ordered_topology(prefix, delays=["200ms"], partitioner="exchange")
    q = f"{prefix}.fulfillment"
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        await channel.declare_exchange(f"{q}.partitions", "fanout", durable=True)
        with pytest.raises(BusError, match=rf"exchange {q}\.partitions differs from the file"):
            await _plan(amqp_url, topology, prune=False, execute=True)
        plain = await connect_plain(amqp_url)
        try:
            assert await applier_depth(plain, f"{q}.p0") is None, "nothing made"
        finally:
            await plain.close()
    finally:
        raw = await (await conn.channel()).get_underlay_channel()
        await raw.exchange_delete(f"{q}.partitions")
        await conn.close()
        await delete_topology(amqp_url, topology)
