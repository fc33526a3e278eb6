"""The private-node harness itself: nodes start on their own ports, a cluster replicates."""

from __future__ import annotations

import asyncio
import json

import aio_pika

from tests.conftest import wait_for
from tests.integration.nodes import Node
from tests.integration.witness import ConnectionWitness


async def test_private_cluster_runs_three_nodes_and_replicates_a_quorum_queue(
    cluster: list[Node], prefix: str
) -> None:
    status = json.loads(cluster[0].ctl("cluster_status", "--formatter", "json"))
    assert sorted(status["running_nodes"]) == sorted(n.name for n in cluster), status
    conn = await aio_pika.connect(cluster[1].url())
    try:
        channel = await conn.channel()
        await channel.declare_queue(
            f"{prefix}.q", durable=True, arguments={"x-queue-type": "quorum"}
        )
        members = cluster[2].ctl("list_queues", "-q", "name", "members")
        line = next(ln for ln in members.splitlines() if ln.startswith(f"{prefix}.q"))
        assert all(n.name in line for n in cluster), line
        await channel.queue_delete(f"{prefix}.q")
    finally:
        await conn.close()


def test_private_node_listens_on_its_own_port_not_the_machine_broker(private_node: Node) -> None:
    assert private_node.port != 5672
    listeners = json.loads(private_node.ctl("status", "--formatter", "json"))["listeners"]
    assert {"interface": "127.0.0.1", "port": private_node.port} in [
        {"interface": x["interface"], "port": x["port"]} for x in listeners
    ], listeners


async def test_the_witness_notices_a_broker_that_was_stopped(private_node: Node) -> None:
    """What guards the shared broker (conftest's `shared_broker_left_running`) really detects
    a `stop_app`: shown on the private node, never on the shared one."""
    with ConnectionWitness(private_node.url()) as witness:
        assert witness.problem() is None
        await asyncio.to_thread(private_node.ctl, "stop_app")
        try:
            await wait_for(lambda: witness.problem() is not None, message="the witness to notice")
        finally:
            await asyncio.to_thread(private_node.ctl, "start_app")
        assert "closed" in (witness.problem() or "")
