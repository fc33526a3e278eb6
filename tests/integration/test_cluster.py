"""A three-node private cluster (tests/integration/nodes.py): multi-host `BUS_URL`, replicated
quorum queues, and the loss of the node the clients are connected to, mid-stream."""

from __future__ import annotations

import pytest

from bus.connection import connect, connect_plain
from bus.errors import BrokerUnavailable
from bus.topology import apply as applier
from bus.topology.plan import Action, desired, diff
from tests.integration.helpers import applied, make_topology
from tests.integration.nodes import Node, free_port


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
            want = desired(topology)
            steps = diff(want, await applier.observe(conn, want))
        finally:
            await conn.close()
        drifted = {s.decl.name for s in steps if s.action is Action.DRIFT}
        assert drifted == {sub.queue, *sub.retry_queues, sub.dlq}, steps
        assert all(
            "x-quorum-initial-group-size" in s.detail for s in steps if s.action is Action.DRIFT
        )
