"""`partitioner: exchange`: RabbitMQ's consistent-hash exchange routes an ordered subscriber's
events straight to its partitions (a hop saved), where its plugin is enabled; and the moves of
the bus's own partitioner that the broker refuses (both partitioners on the real broker)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bus.amqp.connection import connect_plain
from bus.produce.publisher import Publisher
from tests.conftest import wait_for
from tests.integration.helpers import (
    applied,
    apply_topology,
    delete_topology,
    queue_depth,
    running,
)
from tests.integration.nodes import Node
from tests.integration.test_ordering import Recorder, ordered_topology

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)


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


async def test_the_exchange_routes_events_to_the_partitions_without_the_queue(
    hash_node: Node, prefix: str
) -> None:
    url = hash_node.url()
    topology = ordered_topology(prefix, delays=["200ms"], partitioner="exchange")
    q = f"{prefix}.fulfillment"
    async with applied(url, topology), Publisher(url, topology) as pub:
        await pub.publish_many(
            [("order.placed", {"order_id": f"o-{k}", "seq": 0, "n": k}) for k in range(40)]
        )
        depths = [await queue_depth(url, f"{q}.p{i}") for i in range(4)]
        assert await queue_depth(url, q) == 0, "nothing passes through the subscriber's queue"
        assert sum(depths) == 40 and all(depths), f"spread over the partitions: {depths}"
        await pub.publish_many([("order.cancelled", {"order_id": f"o-{k}", "seq": 1, "n": k})
                                for k in range(40)])  # fmt: skip
        again = [await queue_depth(url, f"{q}.p{i}") for i in range(4)]
        assert again == [2 * d for d in depths], "a key's later events follow it to its partition"
    assert not await exchange_exists(url, f"{q}.partitions")


async def test_apply_without_the_plugin_says_how_to_enable_it_in_one_line(
    amqp_url: str, prefix: str
) -> None:
    from bus.cli.topology import _plan
    from bus.errors import BusError

    topology = ordered_topology(prefix, delays=["200ms"], partitioner="exchange")
    try:
        with pytest.raises(BusError) as refused:
            await _plan(amqp_url, topology, prune=False, execute=True)
        text = str(refused.value)
        assert "rabbitmq-plugins enable rabbitmq_consistent_hash_exchange" in text, text
        assert await queue_depth(amqp_url, f"{prefix}.fulfillment.p0") == 0
    finally:
        await delete_topology(amqp_url, topology)


async def test_switching_the_partitioner_waits_for_the_queues_to_drain_and_reroutes_the_events(
    hash_node: Node, prefix: str
) -> None:
    from bus.cli.topology import _plan
    from bus.errors import BusError
    from bus.topology.diff import Action

    url = hash_node.url()
    by_bus = ordered_topology(prefix, delays=["200ms"])
    by_exchange = ordered_topology(prefix, delays=["200ms"], partitioner="exchange")
    q = f"{prefix}.fulfillment"
    rec = Recorder()
    never = lambda e, c: False  # noqa: E731
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
            await pub.publish("order.placed", {"order_id": "o-2", "seq": 0, "n": 2})
            assert await queue_depth(url, q) == 0, "the queue is no longer bound"
            async with running(url, by_exchange, "fulfillment", rec.router("a", never)):
                await wait_for(lambda: rec.ok_count() == 2, message="handled via the exchange")
            steps, _ = await _plan(url, by_bus, prune=False, execute=True)  # and back
            done = {(x.action, x.decl.key) for x in steps}
            assert (Action.DELETE, f"exchange {q}.partitions") in done, done
            assert not await exchange_exists(url, f"{q}.partitions")
            await pub.publish("order.placed", {"order_id": "o-3", "seq": 0, "n": 3})
            assert await queue_depth(url, q) == 1, "bound to the queue again"
    finally:
        await delete_topology(url, by_exchange)
        await delete_topology(url, by_bus)


async def test_a_move_the_broker_refuses_leaves_the_event_in_the_queue(
    amqp_url: str, prefix: str
) -> None:
    """Partitions that refuse every message (a length limit of 0 with reject-publish): the
    partitioner's moves are nacked, and the events stay in the subscriber's queue until the
    partitions take them again, then run in order."""
    topology = ordered_topology(prefix, delays=["200ms"], partitions=2)
    q = f"{prefix}.fulfillment"
    rec = Recorder()
    never = lambda e, c: False  # noqa: E731
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
    """The plugin rebuilds its buckets at boot in the order of the queues' names (Q.p10 before
    Q.p2): grown from 4 to 12 partitions, every key must still reach the partition it reached
    before."""
    node = nodes.new(f"ring-{prefix[-4:]}", plugins=["rabbitmq_consistent_hash_exchange"])
    nodes.start([node])
    try:
        url = node.url()
        topology = ordered_topology(prefix, delays=["200ms"], partitions=12,
                                    partitioner="exchange")  # fmt: skip
        q = f"{prefix}.fulfillment"
        keys = [f"o-{i}" for i in range(120)]
        four = ordered_topology(prefix, delays=["200ms"], partitioner="exchange")
        await apply_topology(url, four)
        await apply_topology(url, topology)  # grown: the partitions are bound again, in order
        before = await where_keys_go(url, topology, q, keys)
        assert len(before) == 120 and len(set(before.values())) == 12
        node.stop()
        nodes.start([node])
        after = await where_keys_go(url, topology, q, keys)
        moved = {k: (before[k], after.get(k)) for k in keys if after.get(k) != before[k]}
        assert not moved, f"keys changed partition across the restart: {moved}"
    finally:
        node.kill()
