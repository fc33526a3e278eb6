"""A three-node private cluster (tests/integration/nodes.py): multi-host `BUS_URL`, replicated
quorum queues, and the loss of the node the clients are connected to, mid-stream."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bus import Context, Router
from bus.amqp.connection import connect, connect_plain
from bus.consume.runtime import Runtime
from bus.errors import BrokerUnavailable
from bus.metrics import Metrics
from bus.produce.publisher import Publisher
from bus.stores import MemoryStore
from bus.topology import apply as applier
from bus.topology.diff import Action, diff
from bus.topology.plan import desired
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology, queue_depth
from tests.integration.nodes import Node, free_port
from tests.integration.test_faults import outcomes

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)


def cluster_url(*nodes: Node | int) -> str:
    """`amqp://guest:guest@127.0.0.1:P1,127.0.0.1:P2,…/`: nodes, or bare ports (nobody there)."""
    ports = [n.port if isinstance(n, Node) else n for n in nodes]
    return "amqp://guest:guest@" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/"


def members(node: Node, queue: str) -> list[str]:
    rows = node.ctl("list_queues", "-q", "name", "members")
    for line in rows.splitlines():
        name, _, rest = line.partition("\t")
        if name == queue:
            return sorted(m.strip(" []") for m in rest.split(","))
    raise AssertionError(f"no queue {queue} in\n{rows}")


async def test_a_multi_host_url_connects_to_the_first_node_that_answers(
    cluster: list[Node],
) -> None:
    a, b, _ = cluster
    nobody = free_port()
    url = cluster_url(nobody, b, a)
    robust = await connect(url, "multi-host")
    plain = await connect_plain(url, "multi-host")
    try:
        assert robust.url.port == b.port, "the robust connection skipped the dead node"
        assert plain.url.port == b.port, "the plain connection skipped the dead node"
    finally:
        await robust.close()
        await plain.close()

    with pytest.raises(BrokerUnavailable) as caught:
        await connect(cluster_url(nobody, free_port()), timeout=3)
    message = str(caught.value)
    assert message.count("connection refused") == 2 and "\n" not in message, message
    assert "guest:***@" in message and "guest:guest" not in message


async def test_replicas_set_the_members_of_each_quorum_queue_and_a_change_is_drift(
    cluster: list[Node], prefix: str
) -> None:
    url = cluster_url(*cluster)
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"]}})
    doc_two = make_topology(prefix, {"svc": {"keys": ["order.placed"], "replicas": 2}})
    async with applied(url, doc_two):
        sub = doc_two.subscriber("svc")
        for q in (sub.queue, *sub.retry_queues, sub.dlq):
            assert len(members(cluster[0], q)) == 2, q
        # RabbitMQ 3.10 compares x-quorum-initial-group-size on redeclare: a topology without
        # `replicas` sees every queue as drift (members change with `rabbitmq-queues grow`)
        conn = await connect_plain(url)
        try:
            want = desired(topology, applier.release(conn))
            steps = diff(want, await applier.observe(conn, want))
        finally:
            await conn.close()
        drifted = {s.decl.name for s in steps if s.action is Action.DRIFT}
        assert drifted == {sub.queue, *sub.retry_queues, sub.dlq}, steps
        assert all(
            "x-quorum-initial-group-size" in s.detail for s in steps if s.action is Action.DRIFT
        )


class Clocked:
    """Effects with the time each event's handler first ran."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.first: dict[str, float] = {}
        self.router = Router()

        @self.router.on("order.placed")
        async def effect(event: dict[str, Any], ctx: Context) -> None:
            self.runs[ctx.id] += 1
            self.first.setdefault(ctx.id, time.monotonic())


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_killing_the_connected_node_mid_stream_then_stopping_another_loses_nothing(
    cluster: list[Node], prefix: str, fault_report: Any
) -> None:
    """5,000 events stream through a publisher and a subscriber, both connected to node A (the
    first in BUS_URL, also the leader of every queue they use). A is killed -9; both move to B;
    A comes back; later B is stopped (graceful) and started; they move to C. Every confirmed
    event is handled, each effect once.

    On RabbitMQ 3.10.8 the publisher's new connection to B often has every publish nacked (sent
    again, nacked again: ~3,300 outstanding and no confirm for 45 s), while a new connection to
    B is confirmed at once; the publisher drops a connection without a confirm for `stall`
    seconds (5) and sends the outstanding events again on the next (test_publisher.py)."""
    a, b, c = cluster
    url, n = cluster_url(a, b, c), 5000
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"], "replicas": 3}})
    effects = Clocked()
    metrics = Metrics(CollectorRegistry())
    started = time.monotonic()
    sent: list[int] = []
    confirmed: list[str] = []
    marks: dict[str, float] = {}
    async with applied(url, topology):
        rt = Runtime(topology, "svc", effects.router, url=url, store=MemoryStore(), metrics=metrics)
        await rt.start()
        pub = await Publisher(url, topology, deadline=120, metrics=metrics).connect()

        async def publish_all() -> None:
            async def one(i: int) -> None:
                sent.append(i)
                confirmed.append(
                    await pub.publish("order.placed", {"order_id": str(i)}, id=f"k-{i}")
                )

            tasks = []
            for i in range(n):
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(0.001)
            await asyncio.gather(*tasks)

        async def faults() -> None:
            await wait_for(lambda: len(confirmed) > n // 5, timeout=60, message="a fifth confirmed")
            marks["sent_at_kill"] = len(sent)
            marks["kill"] = time.monotonic()
            a.kill_vm()

            await wait_for(
                lambda: len(confirmed) > n // 2, timeout=45, message="half confirmed after the kill"
            )
            await asyncio.to_thread(a.start)
            await asyncio.to_thread(a.wait_started)
            await wait_for(lambda: len(confirmed) > 3 * n // 4, timeout=45, message="3/4 confirmed")
            marks["stop"] = time.monotonic()
            await asyncio.to_thread(b.stop)
            await asyncio.to_thread(b.start)
            await asyncio.to_thread(b.wait_started)

        try:
            await asyncio.gather(publish_all(), faults())
            await wait_for(lambda: len(effects.runs) >= n, timeout=120, message=f"{n} effects")
            await wait_for(
                lambda: _empty(url, topology.subscriber("svc").queue), timeout=30, message="drain"
            )
        finally:
            await pub.close()
            await rt.stop(5)
            for node in (a, b):  # never leave the cluster short of a node for later tests
                if node.process is None or node.process.poll() is not None:
                    await asyncio.to_thread(node.start)
                    await asyncio.to_thread(node.wait_started)
    after_kill = [t for i, t in ((int(k[2:]), t) for k, t in effects.first.items())
                  if i >= marks["sent_at_kill"]]  # fmt: skip
    recovery = min(after_kill) - marks["kill"]
    lost = set(confirmed) - set(effects.runs)
    fault_report(scenario=f"3-node cluster: connected node kill -9, later another stop/start "
                 f"(kill -> first new event handled {recovery:.2f}s)", sent=n,
                 confirmed=len(confirmed), handled=len(effects.runs),
                 duplicates=outcomes(metrics, "duplicate"), lost=len(lost),
                 seconds=round(time.monotonic() - started, 1))  # fmt: skip
    assert len(confirmed) == n and not lost
    assert max(effects.runs.values()) == 1, "an effect ran twice"
    assert c.process is not None and c.process.poll() is None


async def _empty(url: str, queue: str) -> bool:
    return await queue_depth(url, queue) == 0
