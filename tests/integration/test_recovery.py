"""Recovery after SIGKILL: the replacement handles the redelivered event at once, not after the
killed process's 30 s claim lease, with the SQLite and the PostgreSQL store alike."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bus.produce.publisher import Publisher
from bus.topology.model import from_dict
from demo.stubs import free_port
from tests.conftest import wait_for
from tests.integration.helpers import applied, topology_doc

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

PG_URL = os.environ.get("BUS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
PROMPT = 5.0  # seconds from the replacement consuming to the event handled


def spawn(name: str, topo: Path, tmp: Path, url: str, store_url: str, port: int,
          handler_seconds: float) -> subprocess.Popen[bytes]:  # fmt: skip
    env = {**os.environ, "BUS_URL": url, "BUS_TOPOLOGY": str(topo), "FAULT_DIR": str(tmp),
           "BUS_STORE_URL": store_url, "FAULT_HANDLER_SECONDS": str(handler_seconds)}  # fmt: skip
    env.pop("BUS_CLAIM_LEASE_SECONDS", None)  # the default lease: 30 s
    return subprocess.Popen(
        [sys.executable, "-m", "bus.cli", "run", name, "--metrics-port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def ready(port: int) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (
                await client.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            ).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_a_replacement_handles_the_event_of_a_sigkilled_subscriber_within_5_seconds(
    amqp_url: str, prefix: str, tmp_path: Path, store: str, fault_report: Any
) -> None:
    name = f"svc-{uuid.uuid4().hex[:8]}"  # its own rows in the shared PostgreSQL table
    doc = topology_doc(prefix, {name: {"keys": ["order.placed"],
                                       "handlers": "tests.integration.fault_handlers:marks_start"}})  # fmt: skip
    topo = tmp_path / "topology.yaml"
    topo.write_text(yaml.safe_dump(doc))
    store_url = f"sqlite:///{tmp_path / 'processed.db'}" if store == "sqlite" else PG_URL
    async with applied(amqp_url, from_dict(doc)):
        first_port, second_port = free_port(), free_port()
        first = spawn(name, topo, tmp_path, amqp_url, store_url, first_port, handler_seconds=60)
        second = None
        try:
            await wait_for(lambda: ready(first_port), timeout=20, message="the first replica ready")
            async with Publisher(amqp_url, from_dict(doc)) as pub:
                await pub.publish("order.placed", {"order_id": "o-1"}, id="e-1")
            await wait_for(lambda: lines(tmp_path / "started"), timeout=10,
                           message="the first replica inside the handler")  # fmt: skip
            first.send_signal(signal.SIGKILL)  # mid-handler: claimed, never completed
            await asyncio.to_thread(first.wait, 10)
            second = spawn(
                name, topo, tmp_path, amqp_url, store_url, second_port, handler_seconds=0.05
            )
            await wait_for(lambda: ready(second_port), timeout=20, interval=0.01,
                           message="the replacement consuming")  # fmt: skip
            consuming = time.monotonic()
            await wait_for(lambda: lines(tmp_path / "effects"), timeout=45, interval=0.01,
                           message="the replacement to handle the event")  # fmt: skip
            recovery = time.monotonic() - consuming
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.to_thread(proc.wait, 20)
    print(f"recovery after SIGKILL ({store} store): {recovery:.2f} s from consuming to handled")
    fault_report(scenario=f"SIGKILL mid-handler, 30 s lease, {store} store: replacement recovery",
                 sent=1, confirmed=1, handled=len(lines(tmp_path / "effects")), duplicates=0,
                 lost=0, seconds=round(recovery, 2))  # fmt: skip
    assert [e.split()[0] for e in lines(tmp_path / "effects")] == ["e-1"], "handled exactly once"
    assert recovery < PROMPT, f"the replacement took {recovery:.1f} s (the claim's lease?)"
