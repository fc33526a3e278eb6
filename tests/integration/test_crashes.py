"""Processes that die at the worst moments lose nothing (duplicates are absorbed)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bus.produce.publisher import Publisher
from bus.topology.model import from_dict
from tests.conftest import wait_for
from tests.integration.helpers import applied, get_all, queue_depth, topology_doc

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)


def spawn(
    name: str, topo: Path, tmp: Path, url: str, *, module: str | None = None, **env: str
) -> subprocess.Popen[bytes]:
    """`bus run NAME`, or `python -m MODULE NAME` for a service with a fault injected."""
    command = (
        ["-m", module, name] if module else ["-m", "bus.cli", "run", name, "--grace-period", "10"]
    )
    return subprocess.Popen(
        [sys.executable, *command],
        env={**os.environ, "BUS_URL": url, "BUS_TOPOLOGY": str(topo), "FAULT_DIR": str(tmp),
             "BUS_STORE_URL": f"sqlite:///{tmp / 'processed.db'}",
             "BUS_CLAIM_LEASE_SECONDS": "1", **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def setup(prefix: str, tmp: Path, handlers: str, **kw: Any) -> tuple[Path, Any]:
    doc = topology_doc(prefix, {"svc": {"keys": ["order.placed"], "handlers": handlers}}, **kw)
    path = tmp / "topology.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, from_dict(doc)


def effects(tmp: Path) -> list[str]:
    f = tmp / "effects"
    return f.read_text().split("\n")[:-1] if f.exists() else []


async def test_a_process_killed_between_republish_and_ack_loses_nothing(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topo, topology = setup(prefix, tmp_path, "tests.integration.fault_handlers:crash_after_handoff")
    async with applied(amqp_url, topology):
        proc = spawn("svc", topo, tmp_path, amqp_url, module="tests.integration.fault_handlers")
        async with Publisher(amqp_url, topology) as pub:
            await pub.publish("order.placed", {"order_id": "o-1"}, id="e-1")
        code = await asyncio.to_thread(proc.wait, 20)
        assert code == 137, "the process should have died right after the hand-off"
        # the original (unacked) went back to the queue, and a copy waits in the retry queue
        proc = spawn("svc", topo, tmp_path, amqp_url)
        try:
            await wait_for(lambda: effects(tmp_path), timeout=15, message="the effect")
            # let the retry copy come back and be recognised as a duplicate
            await wait_for(
                lambda: _all_empty(amqp_url, prefix), timeout=10, message="queues to drain"
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 20) == 0
        assert [e.split()[0] for e in effects(tmp_path)] == ["e-1"], "exactly one effect"
        assert await queue_depth(amqp_url, f"{prefix}.svc.dlq") == 0


async def _all_empty(url: str, prefix: str) -> bool:
    names = [f"{prefix}.svc", f"{prefix}.svc.retry.200ms", f"{prefix}.svc.retry.400ms"]
    return all([await queue_depth(url, n) == 0 for n in names])


async def test_quorum_delivery_limit_parks_a_message_whose_handler_kills_the_process(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topo, topology = setup(prefix, tmp_path, "tests.integration.fault_handlers:always_exit")
    doc = yaml.safe_load(topo.read_text())
    doc["defaults"]["retry"]["delivery_limit"] = 2
    topo.write_text(yaml.safe_dump(doc))
    topology = from_dict(doc)
    async with applied(amqp_url, topology):
        async with Publisher(amqp_url, topology) as pub:
            await pub.publish("order.placed", {"order_id": "poison"}, id="poison-1")
        dlq = f"{prefix}.svc.dlq"
        for _ in range(6):  # a supervisor restarting the crash-looping service
            if await queue_depth(amqp_url, dlq):
                break
            proc = spawn("svc", topo, tmp_path, amqp_url)
            try:
                await asyncio.to_thread(proc.wait, 8)
            except subprocess.TimeoutExpired:  # nothing left to crash on: it was parked
                proc.terminate()
                await asyncio.to_thread(proc.wait, 20)
                break
        await wait_for(
            lambda: _depth(amqp_url, dlq, 1), timeout=5, message="the poison message parked"
        )
        deliveries = (tmp_path / "deliveries").read_text().split()
        assert len(deliveries) == 3, f"delivery limit 2 allows 3 deliveries, saw {len(deliveries)}"
        # the broker parked it: x-death says delivery_limit, and `bus dlq list` reports it
        listed = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "bus.cli", "dlq", "list", "svc"],
            env={**os.environ, "BUS_URL": amqp_url, "BUS_TOPOLOGY": str(topo)},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "delivery-limit" in listed.stdout, listed.stdout + listed.stderr
        (m,) = await get_all(amqp_url, dlq)
        assert m.headers["x-death"][0]["reason"] == "delivery_limit"
        assert m.message_id == "poison-1"


async def _depth(url: str, queue: str, n: int) -> bool:
    return await queue_depth(url, queue) == n
