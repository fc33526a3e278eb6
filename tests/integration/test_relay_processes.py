"""Real `bus relay` processes side by side on one PostgreSQL outbox: one SIGKILLed mid-stream,
or none; what reached the broker (an audit queue) and what the subscriber ran (once each)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from bus.consume.runtime import Runtime
from bus.metrics import Metrics
from bus.outbox import Outbox
from bus.stores import MemoryStore
from bus.topology.model import from_dict
from tests.conftest import wait_for
from tests.integration.helpers import applied, queue_depth, topology_doc
from tests.integration.outbox_kit import (
    audited,
    outbox_db,
    relay_process,
    stop_process,
    write_topology,
)
from tests.integration.test_faults import Effects

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

N, PER_TXN = 2000, 5


async def stream(url: str, outbox: Outbox, written: list[str], rate: float = 1000.0) -> None:
    """N rows in transactions of PER_TXN, at about *rate* rows per second, as an API would."""
    conn = await asyncpg.connect(url)
    started = time.monotonic()
    try:
        for t in range(N // PER_TXN):
            async with conn.transaction():
                for i in range(PER_TXN):
                    data = {"order_id": f"o-{t}-{i}"}
                    written.append(await outbox.add(conn, "order.placed", data))
            pause = started + (t + 1) * PER_TXN / rate - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
    finally:
        await conn.close()


def two_subscribers(prefix: str) -> dict[str, Any]:
    return topology_doc(prefix, {"svc": {"keys": ["order.placed"]}, "audit": {"keys": ["#"]}})


async def test_a_relay_sigkilled_mid_stream_beside_another_loses_nothing_and_runs_each_once(
    amqp_url: str, prefix: str, tmp_path: Path, fault_report: Any
) -> None:
    doc = two_subscribers(prefix)
    topology = from_dict(doc, source="test")
    effects = Effects()
    metrics = Metrics(CollectorRegistry())
    started = time.monotonic()
    async with applied(amqp_url, topology), outbox_db("postgresql", tmp_path) as url:
        file = write_topology(doc, tmp_path / "topology.yaml")
        victim = relay_process(url, file, amqp_url, tmp_path / "relay-a.log")
        survivor = relay_process(url, file, amqp_url, tmp_path / "relay-b.log")
        rt = Runtime(
            topology, "svc", effects.router(), url=amqp_url, store=MemoryStore(), metrics=metrics
        )
        await rt.start()
        written: list[str] = []
        try:
            writer = asyncio.create_task(stream(url, Outbox(topology, source="shop"), written))
            await wait_for(
                lambda: _at_least(amqp_url, f"{prefix}.audit", N // 4), timeout=30,
                message="a quarter of the rows relayed",
            )  # fmt: skip
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            await writer
            await wait_for(
                lambda: len(effects.runs) >= N, timeout=60, message=f"{N} events handled"
            )
        finally:
            stop_process(victim)
            stop_process(survivor)
            await rt.stop(5)
        copies = await audited(amqp_url, f"{prefix}.audit")
    assert len(written) == N
    assert set(effects.runs) == set(written), "every committed row handled"
    assert max(effects.runs.values()) == 1, "each event's handler ran once"
    assert set(copies) == set(written), "every row reached the broker"
    twice = sum(c - 1 for c in copies.values())
    fault_report(
        scenario="relay SIGKILLed mid-stream, a second relay running (PostgreSQL outbox)",
        sent=N, confirmed=len(copies), handled=len(effects.runs), duplicates=twice, lost=0,
        seconds=round(time.monotonic() - started, 1),
    )  # fmt: skip


async def test_two_relays_without_a_crash_publish_each_row_exactly_once(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    doc = topology_doc(prefix, {"audit": {"keys": ["#"]}})
    topology = from_dict(doc, source="test")
    async with applied(amqp_url, topology), outbox_db("postgresql", tmp_path) as url:
        file = write_topology(doc, tmp_path / "topology.yaml")
        relays = [relay_process(url, file, amqp_url, tmp_path / f"relay-{i}.log") for i in (1, 2)]
        written: list[str] = []
        try:
            await stream(url, Outbox(topology, source="shop"), written, rate=2000.0)
            await wait_for(
                lambda: _at_least(amqp_url, f"{prefix}.audit", N), timeout=60,
                message=f"{N} rows on the audit queue",
            )  # fmt: skip
            await asyncio.sleep(0.5)  # a second copy, if any, would be here by now
        finally:
            for proc in relays:
                stop_process(proc)
        assert [p.returncode for p in relays] == [0, 0], "SIGTERM: each relay drains, exits 0"
        copies = await audited(amqp_url, f"{prefix}.audit")
        logs = [(tmp_path / f"relay-{i}.log").read_text() for i in (1, 2)]
    assert set(copies) == set(written)
    assert max(copies.values()) == 1, (
        f"rows published twice: {[i for i, c in copies.items() if c > 1][:5]}"
    )
    assert all("Traceback" not in text for text in logs), logs


async def _at_least(url: str, queue: str, n: int) -> bool:
    return await queue_depth(url, queue) >= n
