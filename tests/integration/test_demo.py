"""`bus demo` end to end: real services as processes, a flaky warehouse, a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from bus.amqp.connection import connect_plain
from bus.topology import apply as applier
from bus.topology.model import from_dict
from demo.topology import Volumes, delete, demo_document, expected_handled

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY = REPO / "topology" / "topology.yaml"


def run_demo(
    *args: str, cwd: Path, url: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BUS_URL": url, "BUS_TOPOLOGY": str(TOPOLOGY), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", "demo", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def summary_of(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("demo: {")]
    assert lines, f"no `demo: {{json}}` line in the output:\n{stdout}"
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("demo: "))
    return result


async def remove_leftovers(url: str, prefix: str) -> None:
    """Delete the demo's objects if the demo could not (it was killed): tests leave nothing."""
    raw = yaml.safe_load(TOPOLOGY.read_text())
    conn = await connect_plain(url)
    try:
        await delete(conn, from_dict(demo_document(raw, prefix, ["1s", "2s", "4s"])))
    finally:
        await conn.close()


async def queue_exists(url: str, name: str) -> bool:
    conn = await connect_plain(url)
    try:
        return await applier.queue_depth(conn, name) is not None
    finally:
        await conn.close()


@pytest.mark.rabbitmq4  # also on RabbitMQ 4.0: streams, ordering and sagas behave there too
async def test_demo_handles_every_order_keeps_cancellations_ordered_backfills_search_and_refunds(
    amqp_url: str, tmp_path: Path
) -> None:
    prefix = f"demo-t{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    try:
        done = run_demo(
            "--orders", "5", "--rate", "50", "--flaky", "2", "--prefix", prefix,
            "--timeout", "25", "--json-summary", cwd=tmp_path, url=amqp_url,
        )  # fmt: skip
    finally:
        gone = not await queue_exists(amqp_url, f"{prefix}.email")
        await remove_leftovers(amqp_url, prefix)
    took = time.monotonic() - started
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text()[-2000:]}" for p in (tmp_path / ".bus" / prefix).glob("*.log")
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}\n{logs}"
    summary = summary_of(done.stdout)

    assert summary["ok"] is True and summary["problems"] == []
    assert summary["published"] == 5, "the API accepted 4 orders, the till placed 1"
    assert summary["outbox"]["relayed"] == 4 and summary["outbox"]["pending"] == 0
    assert summary["api"]["p99_ms"] > 0
    subs = summary["subscribers"]
    assert set(subs) == {
        "email", "analytics", "fulfillment", "invoicing", "orders", "refunds", "payments", "search",
    }  # fmt: skip
    assert subs["orders"]["handled"] == 5, "the API saw each shipment requested"
    for name, counts in subs.items():
        assert counts["handled"] > 0, f"{name} handled nothing: {counts}"
        assert counts["handled"] == counts["expected"], f"{name}: {counts}"
        assert counts["parked"] == 0, f"{name} parked messages: {counts}"
    # per order: order.placed, shipment.requested, invoice.rendered, order.review_requested;
    # 1 order.cancelled; 2 refunds: 2 requested, 2 asked of payments, 1 paid back, 2 timeouts,
    # 1 completed, 1 failed
    assert subs["analytics"]["expected"] == 20 + 1 + 9
    assert subs["fulfillment"]["expected"] == 6 and subs["search"]["expected"] == 6
    assert summary["mails"] == 10, "a confirmation and a delayed follow-up per order"
    assert summary["follow_ups"] == 5
    assert summary["invoices"] == 5 and summary["invoice_sample"].endswith(".pdf")
    # the warehouse failed its first two calls: those orders were retried, then accepted
    assert subs["fulfillment"]["retried"] >= 2
    assert summary["warehouse"]["failed"] == 2
    assert summary["warehouse"]["recovered"] == 2
    assert summary["warehouse"]["accepted"] == 5
    ordering = summary["ordering"]  # what fulfillment recorded, and its metric
    assert ordering["cancelled"] == 1 and ordering["in_order"] == 1
    assert ordering["overtaken"] == 0 and ordering["metric"] == 0
    search = summary["search"]  # added half way by `bus topology apply`, with backfill
    assert search["added"] is True and search["added_after"] >= 1
    assert search["backfilled"] >= 1, "the orders before it came from history"
    assert search["indexed"] == 5 and search["cancelled"] == 1
    assert search["from_history"] >= 1
    refunds = summary["refunds"]  # the refunds saga; payments leaves one unanswered
    assert (refunds["requested"], refunds["completed"], refunds["failed"]) == (2, 1, 1)
    assert refunds["running"] == 0
    assert "demo: ok" in done.stdout
    assert "overtaken: 0" in done.stdout and "backfill" in done.stdout
    assert took < 75, f"the demo took {took:.1f}s"

    assert gone, "the demo left its queues behind"


async def test_demo_with_the_relay_killed_half_way_still_handles_every_order(
    amqp_url: str, tmp_path: Path
) -> None:
    prefix = f"demo-t{uuid.uuid4().hex[:8]}"
    try:
        done = run_demo(
            "--orders", "40", "--rate", "40", "--flaky", "0", "--kill-relay", "--prefix", prefix,
            "--timeout", "40", "--json-summary", cwd=tmp_path, url=amqp_url,
        )  # fmt: skip
    finally:
        await remove_leftovers(amqp_url, prefix)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    summary = summary_of(done.stdout)
    assert summary["ok"] is True
    assert summary["outbox"]["relay_kills"] == 1
    assert summary["outbox"]["relayed"] == 40 - summary["ordering"]["cancelled"]
    for name, counts in summary["subscribers"].items():
        assert counts["handled"] == counts["expected"], f"{name}: {counts}"
    assert "relay killed (SIGKILL)" in done.stdout


def test_demo_without_a_broker_says_how_to_get_one_in_one_line(tmp_path: Path) -> None:
    done = run_demo("--orders", "1", cwd=tmp_path, url="amqp://guest:pw@127.0.0.1:1/", timeout=30)

    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/" in lines[0]
    assert "rabbitmq-server" in lines[0] and "BUS_URL" in lines[0]
    assert "Traceback" not in done.stderr


def test_demo_topology_isolates_names_under_the_prefix_with_short_retries() -> None:
    raw = yaml.safe_load(TOPOLOGY.read_text())
    topology = from_dict(demo_document(raw, "demo", ["1s", "2s"]), source="demo")

    assert set(topology.exchanges) == {"demo.events"}
    assert all(e.exchange == "demo.events" for e in topology.events.values())
    for sub in topology.subscribers():
        assert sub.queue == f"demo.{sub.name}"
        assert sub.delays == ("1s", "2s")
        assert {b.exchange for b in sub.bindings} == {"demo.events"}
    assert topology.schedules() == []
    assert topology.history("demo.events") is not None
    assert topology.subscriber("search").backfill == "7d"
    assert expected_handled(topology, Volumes(3, cancelled=1, refunds=2, silent=1)) == {
        "email": 6, "analytics": 12 + 1 + 9, "fulfillment": 4, "invoicing": 3, "orders": 3,
        "search": 4, "refunds": 2 + 1 + 2, "payments": 2,
    }  # fmt: skip
    before = from_dict(demo_document(raw, "demo", ["1s"], leave_out=["search"]), source="demo")
    assert "search" not in before.subscriber_names and "payments" in before.subscriber_names


def test_demo_volumes_ask_refunds_only_of_orders_accepted_half_way() -> None:
    assert Volumes.of(50) == Volumes(50, cancelled=5, refunds=6, silent=2)
    assert Volumes.of(5) == Volumes(5, cancelled=1, refunds=2, silent=1)
    for orders in range(1, 120):
        v = Volumes.of(orders)
        assert v.refunds <= (orders - v.cancelled) // 2, orders  # the API's first half
        assert 0 <= v.silent < max(v.refunds, 1) or v.refunds == v.silent == 0, orders
        assert sum(v.per_type().values()) >= orders
