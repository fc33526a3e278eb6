"""`bus topology plan | apply` against the live broker."""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest
import yaml

from bus.amqp.connection import connect_plain
from bus.topology.model import from_dict
from bus.topology.plan import QueueDecl, desired
from bus.topology.release import Release
from tests.integration.helpers import delete_topology, topology_doc

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

SUBS: dict[str, dict[str, Any]] = {
    "email": {"keys": ["order.placed", "order.shipped"]},
    "analytics": {"keys": ["#"], "queue_type": "classic"},
    "fulfillment": {"keys": ["order.placed"]},
}


def bus_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", *args], env={**os.environ, **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


class Tool:
    def __init__(self, url: str, path: Path) -> None:
        self.env = {"BUS_URL": url, "BUS_TOPOLOGY": str(path)}
        self.path = path

    def write(self, doc: dict[str, Any]) -> None:
        self.path.write_text(yaml.safe_dump(doc))

    async def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(bus_cli, *args, env=self.env)


@pytest.fixture
async def tool(amqp_url: str, prefix: str, tmp_path: Path) -> Any:
    t = Tool(amqp_url, tmp_path / "topology.yaml")
    yield t
    for subs in (SUBS, {**SUBS, "audit": {"keys": ["order.*"]}}):
        for delays in (["200ms", "400ms", "800ms"], ["200ms", "1s"], ["200ms", "30s", "1m"]):
            await delete_topology(amqp_url, from_dict(topology_doc(prefix, subs, delays=delays)))


async def _declares_equal(url: str, decl: QueueDecl) -> bool:
    """True when declaring *decl* exactly as the contract says is accepted by the live queue."""
    conn = await connect_plain(url)
    try:
        ch = await conn.channel()
        await ch.declare_queue(decl.name, durable=True, arguments=dict(decl.arguments))
        return True
    except aiormq.exceptions.ChannelPreconditionFailed:
        return False
    finally:
        await conn.close()


async def test_apply_creates_exactly_the_contract_objects_and_is_idempotent(
    amqp_url: str, prefix: str, tool: Tool, broker_version: str
) -> None:
    doc = topology_doc(prefix, SUBS)
    tool.write(doc)
    first = await tool("topology", "apply")
    assert first.returncode == 0, first.stderr
    # 1 exchange + 3 x (queue, 3 retry queues, dlq) + 4 bindings
    assert "applied: 20 to create, 0 to delete, 0 unchanged" in first.stdout, first.stdout
    for d in desired(from_dict(doc), Release.parse(broker_version)):  # DLQs differ on 4.x
        if isinstance(d, QueueDecl):
            assert await _declares_equal(amqp_url, d), (
                f"{d.name} does not have the contract arguments"
            )
    # an argument the contract does not set is refused: the live queue really has arguments
    conn = await aio_pika.connect(amqp_url)
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        ch = await conn.channel()
        await ch.declare_queue(
            f"{prefix}.email.retry.200ms", durable=True, arguments={"x-message-ttl": 1}
        )
    await conn.close()

    again = await tool("topology", "apply")
    assert "applied: 0 to create, 0 to delete, 20 unchanged" in again.stdout, again.stdout
    plan = await tool("topology", "plan")
    assert "plan: 0 to create" in plan.stdout

    # a fourth subscriber: only its own objects are created
    doc4 = copy.deepcopy(doc)
    doc4["subscribers"].update(
        topology_doc(prefix, {"audit": {"keys": ["order.*"]}})["subscribers"]
    )
    tool.write(doc4)
    plan4 = await tool("topology", "plan")
    created = [line for line in plan4.stdout.splitlines() if line.startswith("+")]
    assert len(created) == 6, plan4.stdout  # queue, 3 retry queues, dlq, 1 binding
    assert all(f"{prefix}.audit" in line for line in created), created
    applied4 = await tool("topology", "apply")
    assert "applied: 6 to create, 0 to delete, 20 unchanged" in applied4.stdout, applied4.stdout


async def test_a_queue_whose_arguments_differ_is_reported_as_drift_in_one_line(
    amqp_url: str, prefix: str, tool: Tool
) -> None:
    doc = topology_doc(prefix, SUBS)
    tool.write(doc)
    conn = await aio_pika.connect(amqp_url)
    ch = await conn.channel()
    await ch.declare_queue(
        f"{prefix}.email.retry.400ms", durable=True,
        arguments={"x-queue-type": "quorum", "x-message-ttl": 5000},
    )  # fmt: skip
    await conn.close()
    plan = await tool("topology", "plan")
    drift = [line for line in plan.stdout.splitlines() if line.startswith("!")]
    assert len(drift) == 1, plan.stdout
    assert f"{prefix}.email.retry.400ms" in drift[0] and "x-message-ttl" in drift[0]
    applied = await tool("topology", "apply")
    assert applied.returncode == 1, "drift is a failure to converge"
    assert "1 drifted" in applied.stdout
    assert "Traceback" not in applied.stderr
    # everything else was still created
    again = await tool("topology", "plan")
    assert "plan: 0 to create" in again.stdout, again.stdout


async def test_changing_delays_creates_new_retry_queues_and_prune_removes_only_empty_old_ones(
    amqp_url: str, prefix: str, tool: Tool
) -> None:
    tool.write(topology_doc(prefix, SUBS, delays=["200ms", "30s", "1m"]))
    assert (await tool("topology", "apply")).returncode == 0

    tool.write(topology_doc(prefix, SUBS, delays=["200ms", "1s"]))
    plan = await tool("topology", "plan")
    created = [ln for ln in plan.stdout.splitlines() if ln.startswith("+")]
    kept = [ln for ln in plan.stdout.splitlines() if ln.startswith("?")]
    assert sorted(c.split()[3] for c in created) == sorted(f"{prefix}.{s}.retry.1s" for s in SUBS)
    assert len(kept) == 6, plan.stdout  # 30s and 1m of three subscribers
    assert all("apply --prune" in k for k in kept)

    applied = await tool("topology", "apply")
    assert applied.returncode == 0
    assert "6 no longer declared (kept)" in applied.stdout, applied.stdout

    # a message still waits in one old retry queue: prune must keep that queue
    conn = await aio_pika.connect(amqp_url)
    ch = await conn.channel()
    await ch.default_exchange.publish(
        aio_pika.Message(b"{}"), routing_key=f"{prefix}.email.retry.1m"
    )
    await conn.close()
    pruned = await tool("topology", "apply", "--prune")
    assert pruned.returncode == 1, "a queue was refused: " + pruned.stdout + pruned.stderr
    assert "5 to delete" in pruned.stdout, pruned.stdout
    assert f"{prefix}.email.retry.1m" in pruned.stdout and "holds 1 messages" in pruned.stdout
    after = await tool("topology", "plan", "--prune")
    leftover = [ln for ln in after.stdout.splitlines() if ln.startswith("x")]
    assert len(leftover) == 1 and f"{prefix}.email.retry.1m" in leftover[0], after.stdout


async def test_apply_prints_each_object_once_with_the_routing_keys_of_its_bindings(
    prefix: str, tool: Tool
) -> None:
    tool.write(topology_doc(prefix, {"email": {"keys": ["order.placed", "order.shipped"]}}))
    done = await tool("topology", "apply")
    assert done.returncode == 0, done.stderr
    bindings = [line for line in done.stdout.splitlines() if " binding " in line]
    assert bindings == [
        f"+ create    binding {prefix}.events -> {prefix}.email [order.placed]",
        f"+ create    binding {prefix}.events -> {prefix}.email [order.shipped]",
    ], done.stdout
    assert "creating" not in done.stderr, "each object once: no log line beside the plan line"


async def test_teardown_asks_refuses_full_queues_unless_forced_and_removes_what_apply_made(
    amqp_url: str, prefix: str, tool: Tool
) -> None:
    tool.write(topology_doc(prefix, {"email": {"keys": ["order.placed"]}}))
    assert (await tool("topology", "apply")).returncode == 0
    conn = await aio_pika.connect(amqp_url)
    ch = await conn.channel()
    await ch.default_exchange.publish(aio_pika.Message(b"{}"), f"{prefix}.email.dlq")
    await conn.close()

    refused = await tool("topology", "teardown", "--yes")
    assert refused.returncode == 1
    assert f"{prefix}.email.dlq (1)" in refused.stderr and "--force" in refused.stderr
    no_terminal = await tool("topology", "teardown", "--force")  # stdin is not a terminal
    assert no_terminal.returncode == 2 and "pass --yes" in no_terminal.stderr
    assert await _queue_exists(amqp_url, f"{prefix}.email")

    forced = await tool("topology", "teardown", "--force", "--yes")
    assert forced.returncode == 0, forced.stderr
    assert f"delete queue {prefix}.email.dlq (1 messages)" in forced.stdout
    # 5 queues, record, exchange, and the 4 events' delay hand-off queues
    assert "teardown: 11 deleted, 0 kept" in forced.stdout, forced.stdout
    out = f"bus.delay.out.{prefix}.events.order.placed"
    for queue in (f"{prefix}.email", f"{prefix}.email.dlq", f"bus.state.{prefix}.email", out):
        assert not await _queue_exists(amqp_url, queue), queue
    plan = await tool("topology", "plan")
    assert "plan: 7 to create" in plan.stdout, plan.stdout  # the exchange is gone too
    assert "8 of 105 objects to create" in plan.stdout, "the hand-off queues stayed"
    nothing = await tool("topology", "teardown", "--yes")
    assert nothing.returncode == 0 and "teardown: 0 deleted" in nothing.stdout


async def _queue_exists(url: str, name: str) -> bool:
    from bus.topology.apply import queue_depth

    conn = await connect_plain(url)
    try:
        return await queue_depth(conn, name) is not None
    finally:
        await conn.close()
