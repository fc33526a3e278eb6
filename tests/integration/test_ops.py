"""Operating the bus: `bus status`, JSON logs with the message's context, trace context."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import yaml

from bus import Context, Router
from bus.produce.publisher import Publisher
from tests.conftest import LOCAL_URL, wait_for
from tests.integration.helpers import applied, make_topology, queue_depth, running, topology_doc

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

SUBS = {"email": {"keys": ["order.placed"]}, "audit": {"keys": ["shipment.requested"]}}


def bus_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", *args], env={**os.environ, **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_status_json_matches_the_brokers_own_counts_and_fails_on_dlq(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topo = tmp_path / "topology.yaml"
    topo.write_text(yaml.safe_dump(topology_doc(prefix, SUBS, delays=["1m"])))
    env = {"BUS_URL": amqp_url, "BUS_TOPOLOGY": str(topo)}
    topology = make_topology(prefix, SUBS, delays=["1m"])
    async with applied(amqp_url, topology):
        conn = await aio_pika.connect(amqp_url)
        ch = await conn.channel()
        for queue, n in (
            (f"{prefix}.email", 3),
            (f"{prefix}.email.retry.1m", 2),
            (f"{prefix}.email.dlq", 1),
        ):
            for _ in range(n):
                await ch.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=queue)
        await conn.close()
        await wait_for(lambda: _depth(amqp_url, f"{prefix}.email", 3), message="3 ready")
        clean = await asyncio.to_thread(bus_cli, "status", "--json", "--fail-on-dlq", env=env)
        assert clean.returncode == 1, "a DLQ holds a message"
        rows = {r["subscriber"]: r for r in json.loads(clean.stdout)}
        email = rows["email"]
        assert (email["queue"]["ready"], email["queue"]["consumers"]) == (3, 0)
        assert [q["ready"] for q in email["retries"]] == [2]
        assert email["dlq"]["ready"] == 1
        assert rows["audit"]["dlq"]["ready"] == 0
        if amqp_url == LOCAL_URL and shutil.which("rabbitmqctl"):
            want = {f"{prefix}.email": email["queue"]["ready"],
                    f"{prefix}.email.retry.1m": email["retries"][0]["ready"],
                    f"{prefix}.email.dlq": email["dlq"]["ready"]}  # fmt: skip

            async def broker_agrees() -> bool:  # rabbitmqctl's quorum stats lag a few seconds
                listed = await asyncio.to_thread(
                    subprocess.run, ["rabbitmqctl", "list_queues", "-q", "name", "messages_ready"],
                    capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                rows = dict(ln.split("\t")[:2] for ln in listed.stdout.splitlines() if "\t" in ln)
                return all(int(rows.get(q, -1)) == n for q, n in want.items())

            await wait_for(broker_agrees, timeout=20, interval=1, message="rabbitmqctl's counts")
        table = await asyncio.to_thread(bus_cli, "status", env=env)
        assert table.returncode == 0 and f"{prefix}.email" in table.stdout


async def _depth(url: str, queue: str, n: int) -> bool:
    return await queue_depth(url, queue) == n


async def test_follow_up_events_continue_the_trace_and_correlation(
    amqp_url: str, prefix: str
) -> None:
    topology = make_topology(prefix, SUBS)
    seen: dict[str, Any] = {}
    email, audit = Router(), Router()

    @email.on("order.placed")
    async def placed(event: dict[str, Any], ctx: Context) -> None:
        seen["parent"] = ctx.meta.traceparent
        await ctx.publish("shipment.requested", {"order_id": event["order_id"]})

    @audit.on("shipment.requested")
    async def requested(event: dict[str, Any], ctx: Context) -> None:
        seen["child"] = ctx.meta
        seen["child_time"] = ctx.time

    async with (
        applied(amqp_url, topology),
        running(amqp_url, topology, "email", email),
        running(amqp_url, topology, "audit", audit),
        Publisher(amqp_url, topology) as pub,
    ):
        await pub.publish("order.placed", {"order_id": "o-1"}, id="root-1", correlation_id="req-9")
        await wait_for(lambda: "child" in seen, message="the follow-up event")
    parent, child = seen["parent"], seen["child"]
    assert parent and parent.startswith("00-") and len(parent.split("-")[1]) == 32
    assert child.traceparent.split("-")[1] == parent.split("-")[1], "same trace id"
    assert child.traceparent.split("-")[2] != parent.split("-")[2], "a new span"
    assert child.correlation_id == "req-9" and child.causation_id == "root-1"


@pytest.mark.timeout(60)
async def test_json_logs_carry_the_message_context_and_never_the_password(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    doc = topology_doc(prefix, {"svc": {"keys": ["order.placed"],
                                        "handlers": "tests.integration.fault_handlers:crash_after_handoff"}},
                       delays=["100ms"])  # fmt: skip
    topo = tmp_path / "topology.yaml"
    topo.write_text(yaml.safe_dump(doc))
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"]}}, delays=["100ms"])
    async with applied(amqp_url, topology):
        proc = subprocess.Popen(
            [sys.executable, "-m", "bus.cli", "--log-format", "json", "run", "svc"],
            env={**os.environ, "BUS_URL": amqp_url, "BUS_TOPOLOGY": str(topo), "FAULT_DIR": str(tmp_path),
                 "BUS_STORE_URL": "memory://"},
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        async with Publisher(amqp_url, topology) as pub:
            await pub.publish(
                "order.placed", {"order_id": "o-1"}, id="log-1", correlation_id="req-7"
            )
        await wait_for(lambda: (tmp_path / "effects").exists(), message="the handler to succeed")
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=20)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    failed = [r for r in lines if r.get("event_id") == "log-1"]
    assert failed, err
    record = failed[0]
    assert record["event_type"] == "order.placed" and record["subscriber"] == "svc"
    assert record["attempt"] == 1 and record["correlation_id"] == "req-7"
    assert "guest:guest" not in err
