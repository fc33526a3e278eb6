"""`bus topology plan --prune | apply --prune` after a subscriber leaves the file, on the live
broker: its queues are listed with their messages, the empty ones go, a full or consumed one is
refused in one line, and nothing the bus did not create (or another file applied) is touched."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from bus.amqp.connection import connect_plain
from bus.topology.apply import queue_depth
from bus.topology.model import from_dict
from tests.integration.helpers import delete_topology, topology_doc
from tests.integration.test_topology_apply import Tool

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

SUBS: dict[str, dict[str, Any]] = {
    "email": {"keys": ["order.placed"]},
    "analytics": {"keys": ["#"], "queue_type": "classic"},
    "audit": {"keys": ["order.*"]},
}
DELAYS = ["200ms", "1s"]


@contextlib.asynccontextmanager
async def _cleanup(url: str, *queues: str, docs: list[dict[str, Any]]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for doc in docs:
            await delete_topology(url, from_dict(doc))
        conn = await aio_pika.connect(url)
        try:
            for name in queues:
                ch = await conn.channel()
                await ch.queue_delete(name)
        finally:
            await conn.close()


async def _exists(url: str, name: str) -> bool:
    conn = await connect_plain(url)
    try:
        return await queue_depth(conn, name) is not None
    finally:
        await conn.close()


async def _publish(url: str, queue: str) -> None:
    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel()
        await ch.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=queue)
    finally:
        await conn.close()


async def _hold(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    """A consumer that never finishes: the queue stays consumed."""


def _lines(out: str, sign: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith(sign)]


async def test_removing_a_subscriber_prunes_its_empty_queues_and_refuses_the_full_one(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    doc = topology_doc(prefix, SUBS, delays=DELAYS)
    other = topology_doc(f"{prefix}o", {"audit": {"keys": ["#"]}}, delays=DELAYS)  # another file
    foreign = f"{prefix}.audit.retry.5m"  # named like the bus's queues, but not made by it
    audit = [f"{prefix}.audit", f"{prefix}.audit.retry.200ms", f"{prefix}.audit.retry.1s"]
    dlq, record = f"{prefix}.audit.dlq", f"bus.state.{prefix}.audit"
    tool, other_tool = Tool(amqp_url, tmp_path / "a.yaml"), Tool(amqp_url, tmp_path / "b.yaml")
    async with _cleanup(amqp_url, foreign, dlq, record, docs=[doc, other]):
        tool.write(doc)
        other_tool.write(other)
        for t in (tool, other_tool):
            done = await t("topology", "apply")
            assert done.returncode == 0, done.stdout + done.stderr
        conn = await aio_pika.connect(amqp_url)
        await (await conn.channel()).declare_queue(foreign, durable=True)
        await conn.close()
        await _publish(amqp_url, dlq)

        without = topology_doc(prefix, {k: v for k, v in SUBS.items() if k != "audit"},
                               delays=DELAYS)  # fmt: skip
        tool.write(without)
        plain = await tool("topology", "plan")
        assert "0 to delete" in plain.stdout and "5 no longer declared (kept)" in plain.stdout, (
            plain.stdout
        )
        plan = await tool("topology", "plan", "--prune")
        assert plan.returncode == 0, plan.stderr
        deleted = _lines(plan.stdout, "-")
        assert sorted(ln.split()[3] for ln in deleted if " queue " in ln) == sorted(audit), (
            plan.stdout
        )
        assert all(ln.endswith(": empty") for ln in deleted if " queue " in ln), plan.stdout
        assert [ln.split()[3] for ln in _lines(plan.stdout, "x")] == [dlq], plan.stdout
        assert "holds 1 messages" in plan.stdout
        assert "4 to delete" in plan.stdout, plan.stdout  # 3 queues and the binding
        assert f"{prefix}o." not in plan.stdout and foreign not in plan.stdout

        # a replica of the removed subscriber still runs: nothing of it goes
        conn = await aio_pika.connect(amqp_url)
        queue = await (await conn.channel()).get_queue(audit[0])
        tag = await queue.consume(_hold, no_ack=False)
        try:
            busy = await tool("topology", "apply", "--prune", "--drop-messages")
        finally:
            await queue.cancel(tag)
            await conn.close()
        assert busy.returncode == 1, busy.stdout
        assert "0 to delete" in busy.stdout and "still consumed" in busy.stdout, busy.stdout
        assert all([await _exists(amqp_url, q) for q in [*audit, dlq]])

        pruned = await tool("topology", "apply", "--prune")
        assert pruned.returncode == 1, pruned.stdout
        refusal = pruned.stdout.strip().splitlines()[-1]
        assert refusal.startswith(f"not deleted: {dlq} (holds 1 messages)"), pruned.stdout
        assert "--drop-messages" in refusal
        assert "Traceback" not in pruned.stderr
        for q in audit:
            assert not await _exists(amqp_url, q), f"{q} should be gone"
        for q in [dlq, record, foreign, f"{prefix}o.audit", f"{prefix}o.audit.dlq",
                  f"{prefix}.email", f"{prefix}.analytics.retry.1s"]:  # fmt: skip
            assert await _exists(amqp_url, q), f"{q} should remain"

        again = await tool("topology", "plan", "--prune")
        assert [ln.split()[3] for ln in _lines(again.stdout, "x")] == [dlq], again.stdout
        assert "0 to delete" in again.stdout, again.stdout
        dropped = await tool("topology", "apply", "--prune", "--drop-messages")
        assert dropped.returncode == 0, dropped.stdout + dropped.stderr
        assert (
            f"- delete    queue {dlq}" in dropped.stdout and "1 messages dropped" in dropped.stdout
        )
        assert not await _exists(amqp_url, dlq)
        assert not await _exists(amqp_url, record), "its record goes with its last queue"
        assert await _exists(amqp_url, foreign)
        final = await tool("topology", "plan", "--prune")
        assert "plan: 0 to create, 0 to delete" in final.stdout, final.stdout
        assert not _lines(final.stdout, "x") and not _lines(final.stdout, "?"), final.stdout
        other_plan = await other_tool("topology", "plan", "--prune")
        assert "0 to create, 0 to delete" in other_plan.stdout, other_plan.stdout


async def test_an_event_removed_from_the_file_takes_its_delay_hand_off_queue_with_prune(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    doc = topology_doc(prefix, {"email": {"keys": ["order.placed"]}}, delays=DELAYS)
    slim = {**doc, "events": {k: v for k, v in doc["events"].items() if k != "order.shipped"}}
    out = f"bus.delay.out.{prefix}.events.order.shipped"
    tool = Tool(amqp_url, tmp_path / "t.yaml")
    async with _cleanup(amqp_url, out, docs=[doc]):
        tool.write(doc)
        assert (await tool("topology", "apply")).returncode == 0
        assert await _exists(amqp_url, out)
        tool.write(slim)
        plan = await tool("topology", "plan", "--prune")
        assert [ln.split()[3] for ln in _lines(plan.stdout, "-") if " queue " in ln] == [out], (
            plan.stdout
        )
        done = await tool("topology", "apply", "--prune")
        assert done.returncode == 0, done.stdout + done.stderr
        assert not await _exists(amqp_url, out)


async def test_removing_an_ordered_subscriber_prunes_its_partitions_holds_and_reports(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    from bus.amqp.plumbing import write_record

    exchange = f"{prefix}.events"
    events = {"order.placed": {"exchange": exchange, "key": "order_id"}}
    subs = {"email": {"keys": ["order.placed"]},
            "ledger": {"keys": ["order.*"], "ordered": True, "partitions": 2}}  # fmt: skip
    doc = topology_doc(prefix, subs, delays=["200ms"], events=events)
    q = f"{prefix}.ledger"
    gone = [q, f"{q}.retry.200ms", f"{q}.dlq", f"{q}.p0", f"{q}.p1", f"{q}.p0.hold",
            f"{q}.p1.hold", f"bus.state.{q}", f"bus.state.{q}.p0"]  # fmt: skip
    tool = Tool(amqp_url, tmp_path / "t.yaml")
    async with _cleanup(amqp_url, *gone, docs=[doc]):
        tool.write(doc)
        done = await tool("topology", "apply")
        assert done.returncode == 0, done.stdout + done.stderr
        conn = await connect_plain(amqp_url)
        try:  # what a running partition consumer reports
            await write_record(conn, f"bus.state.{q}.p0", b"{}")
        finally:
            await conn.close()
        tool.write({**doc, "subscribers": {"email": doc["subscribers"]["email"]}})
        pruned = await tool("topology", "apply", "--prune")
        assert pruned.returncode == 0, pruned.stdout + pruned.stderr
        assert "8 to delete" in pruned.stdout, pruned.stdout  # 7 queues, 1 binding
        for name in gone:
            assert not await _exists(amqp_url, name), f"{name} should be gone"
        assert await _exists(amqp_url, f"{prefix}.email")
