"""An existing deployment's DLQ, declared before the bus knew RabbitMQ 4 (so under 4.0's default
delivery limit of 20), is re-declared without a limit by `bus topology apply`, every parked
message kept in order with its headers; `plan` shows it first. On 3.10 there is nothing to do."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aio_pika
import pytest
import yaml
from aio_pika.abc import AbstractIncomingMessage

from bus.amqp.connection import connect_plain
from bus.ops import dlq
from bus.topology import apply as applier
from bus.topology.diff import diff
from bus.topology.migrate import holding_queue
from bus.topology.plan import desired
from bus.topology.release import OLDEST
from tests.conftest import wait_for
from tests.integration.helpers import delete_topology, make_topology, queue_depth, topology_doc

pytestmark = pytest.mark.rabbitmq4

SUBS = {"email": {"keys": ["order.placed"]}}
X_DEATH = [{"count": 1, "reason": "delivery_limit", "queue": "email", "exchange": "",
            "routing-keys": ["email"]}]  # fmt: skip


def bus_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", *args], env={**os.environ, **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def deploy_as_before(url: str, prefix: str) -> None:
    """`bus topology apply` as it was: DLQs declared the 3.x way on whatever broker."""
    topology = make_topology(prefix, SUBS)
    conn = await connect_plain(url)
    try:
        want = desired(topology, OLDEST)
        await applier.apply(conn, diff(want, await applier.observe(conn, want)), want)
        channel = await conn.channel(publisher_confirms=True)
        for i in range(3):
            headers = {"bus-dead-reason": "rejected"} if i else {"x-death": X_DEATH}
            message = aio_pika.Message(b"{}", message_id=f"p-{i}", type="order.placed",
                                       headers=headers, delivery_mode=2)  # fmt: skip
            await channel.default_exchange.publish(message, routing_key=f"{prefix}.email.dlq")
    finally:
        await conn.close()


async def ignore(message: AbstractIncomingMessage) -> None:
    pass


async def test_apply_re_declares_an_old_dlq_without_a_limit_and_keeps_its_messages(
    amqp_url: str, prefix: str, tmp_path: Path, broker_version: str
) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(topology_doc(prefix, SUBS)))
    env = {"BUS_URL": amqp_url, "BUS_TOPOLOGY": str(path)}
    main, dlq_name = f"{prefix}.email", f"{prefix}.email.dlq"
    topology = make_topology(prefix, SUBS)
    try:
        await deploy_as_before(amqp_url, prefix)
        plan = await asyncio.to_thread(bus_cli, "topology", "plan", env=env)
        assert plan.returncode == 0, plan.stderr
        if broker_version.startswith("3"):
            assert "migrate" not in plan.stdout, plan.stdout
            return
        assert f"~ migrate   queue {dlq_name}" in plan.stdout, plan.stdout
        assert "its 3 messages" in plan.stdout and "1 to re-declare" in plan.stdout

        conn = await connect_plain(amqp_url)
        try:
            channel = await conn.channel()  # a subscriber still consuming: refused, untouched
            await (await channel.declare_queue(main, passive=True)).consume(ignore)
            refused = await asyncio.to_thread(bus_cli, "topology", "apply", env=env)
            assert refused.returncode == 1, refused.stdout
            assert "1 consumer(s)" in refused.stdout and "stop the subscriber" in refused.stdout
            assert await queue_depth(amqp_url, dlq_name) == 3
            await channel.close()

            async def three() -> bool:  # a quorum queue applies a read's returns through its log
                return await applier.queue_depth(conn, dlq_name) == 3

            applied = await asyncio.to_thread(bus_cli, "topology", "apply", env=env)
            assert applied.returncode == 0, applied.stdout + applied.stderr
            sub = topology.subscriber("email")
            for _ in range(25):  # no limit any more: reading keeps them
                parked = await dlq.browse(conn, sub)
                assert [p.id for p in parked] == ["p-0", "p-1", "p-2"], "moved in order"
                await wait_for(three, timeout=10, message="3 messages back after a read")
            assert parked[0].reason == "delivery-limit", "x-death travelled with the message"
            assert parked[1].reason == "rejected"
            assert await applier.queue_depth(conn, holding_queue(dlq_name)) is None
        finally:
            await conn.close()
        again = await asyncio.to_thread(bus_cli, "topology", "plan", env=env)
        assert "migrate" not in again.stdout and "drift" not in again.stdout, again.stdout
    finally:
        await delete_topology(amqp_url, topology)
