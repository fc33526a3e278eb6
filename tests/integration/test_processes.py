"""`bus run NAME --processes N`: N consumer processes of one subscriber under one parent, with
one /metrics, readiness only while all consume, restarts of a child that dies, a drain on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from bus.produce.publisher import Publisher
from bus.topology.model import from_dict
from demo.stubs import free_port
from tests.conftest import wait_for
from tests.integration.helpers import applied, queue_depth, topology_doc

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

HANDLERS = "tests.integration.process_handlers:records"


class Parent:
    """A `bus run svc --processes N` process, its log, and what its handlers recorded."""

    def __init__(self, tmp: Path, url: str, topo: Path, port: int, *args: str, **env: str):
        self.tmp, self.port = tmp, port
        self.log = tmp / "stderr.log"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bus.cli", "run", "svc", "--metrics-port", str(port),
                 "--grace-period", "10", *args],
                env={**os.environ, "BUS_URL": url, "BUS_TOPOLOGY": str(topo), "FAULT_DIR": str(tmp),
                     "BUS_STORE_URL": f"sqlite:///{tmp / 'processed.db'}", **env},
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip

    def lines(self, name: str) -> list[str]:
        f = self.tmp / name
        return f.read_text().splitlines() if f.exists() else []

    def child_pids(self) -> list[int]:
        """The pids of the children started so far, in order."""
        return [int(p) for p in re.findall(r"started \(pid (\d+)\)", self.log.read_text())]

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return 0, str(e)

    async def status(self, path: str) -> int:
        return (await asyncio.to_thread(self.get, path))[0]

    async def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, 40)


def setup(prefix: str, tmp: Path, **spec: Any) -> tuple[Path, Any]:
    doc = topology_doc(prefix, {"svc": {"keys": ["order.placed"], "handlers": HANDLERS, **spec}})
    path = tmp / "topology.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, from_dict(doc)


async def publish(url: str, topology: Any, ids: list[str]) -> None:
    async with Publisher(url, topology) as pub:
        for i in ids:
            await pub.publish("order.placed", {"order_id": i}, id=i)


def consumed_ok(metrics: str) -> float:
    """bus_consumed_total{outcome="ok"} summed over event types, from the served text."""
    pattern = r'^bus_consumed_total\{[^}]*outcome="ok"[^}]*\} ([0-9.e+]+)$'
    return sum(float(v) for v in re.findall(pattern, metrics, re.M))


async def test_two_processes_share_a_queue_behind_one_metrics_endpoint(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topo, topology = setup(prefix, tmp_path, processes=2, prefetch=1)  # from the topology file
    async with applied(amqp_url, topology):
        parent = Parent(tmp_path, amqp_url, topo, free_port(), HANDLER_SECONDS="0.02")
        try:
            await wait_for(lambda: _is(parent, 200), 40, message="/readyz 200")
            await wait_for(lambda: len(parent.child_pids()) == 2, 5, message="two children")
            ids = [f"e-{i}" for i in range(60)]
            await publish(amqp_url, topology, ids)
            await wait_for(lambda: len(parent.lines("effects")) >= 60, 60, message="60 effects")
            effects = [ln.split() for ln in parent.lines("effects")]
            assert sorted(i for i, _ in effects) == sorted(ids)
            pids = {int(p) for _, p in effects}
            assert pids == set(parent.child_pids()), f"both children handled events: {pids}"

            async def summed() -> bool:
                _, text = await asyncio.to_thread(parent.get, "/metrics")
                return consumed_ok(text) == 60

            await wait_for(summed, 10, message="/metrics to count the 60 events of both")
            _, text = await asyncio.to_thread(parent.get, "/metrics")
            assert re.search(r'^bus_ready\{subscriber="svc"\} 2\.0$', text, re.M), text
            assert await parent.status("/healthz") == 200
        finally:
            code = await parent.stop()
        assert code == 0, parent.log.read_text()


async def test_a_killed_child_is_restarted_with_its_reason_logged_and_events_still_handled(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topo, topology = setup(prefix, tmp_path)
    async with applied(amqp_url, topology):
        parent = Parent(tmp_path, amqp_url, topo, free_port(), "--processes", "2")
        try:
            await wait_for(lambda: _is(parent, 200), 40, message="/readyz 200")
            victim = parent.child_pids()[0]
            os.kill(victim, signal.SIGKILL)
            await wait_for(
                lambda: f"(pid {victim}) ended" in parent.log.read_text(), 10,
                message="the parent to log the child's end",
            )  # fmt: skip
            assert "killed by SIGKILL; restarting" in parent.log.read_text()
            await wait_for(lambda: len(parent.child_pids()) == 3, 15, message="a new child")
            await wait_for(lambda: _is(parent, 200), 40, message="ready again")
            ids = [f"k-{i}" for i in range(20)]
            await publish(amqp_url, topology, ids)
            await wait_for(lambda: len(parent.lines("effects")) >= 20, 30, message="20 effects")
            assert sorted(ln.split()[0] for ln in parent.lines("effects")) == sorted(ids)
        finally:
            code = await parent.stop()
        assert code == 0, parent.log.read_text()


async def test_readiness_waits_for_every_child(amqp_url: str, prefix: str, tmp_path: Path) -> None:
    topo, topology = setup(prefix, tmp_path)
    async with applied(amqp_url, topology):
        parent = Parent(tmp_path, amqp_url, topo, free_port(), "--processes", "2")
        try:
            await wait_for(lambda: _is(parent, 200), 40, message="/readyz 200")
            assert len(parent.child_pids()) == 2, "ready only once both children consume"
            os.kill(parent.child_pids()[1], signal.SIGKILL)
            await wait_for(lambda: _is(parent, 503), 10, message="/readyz 503, a child gone")
            await wait_for(lambda: _is(parent, 200), 30, message="/readyz 200 again")
        finally:
            code = await parent.stop()
        assert code == 0, parent.log.read_text()


async def _is(parent: Parent, status: int) -> bool:
    return await parent.status("/readyz") == status


async def test_sigterm_drains_every_child(amqp_url: str, prefix: str, tmp_path: Path) -> None:
    topo, topology = setup(prefix, tmp_path, prefetch=4)
    async with applied(amqp_url, topology):
        parent = Parent(
            tmp_path, amqp_url, topo, free_port(), "--processes", "2", HANDLER_SECONDS="1"
        )
        try:
            await wait_for(lambda: _is(parent, 200), 40, message="/readyz 200")
            ids = [f"d-{i}" for i in range(40)]
            await publish(amqp_url, topology, ids)
            await wait_for(lambda: len(parent.lines("started")) >= 4, 20, message="handlers")
        finally:
            code = await parent.stop()
        assert code == 0, parent.log.read_text()
        started = {ln.split()[0] for ln in parent.lines("started")}
        finished = {ln.split()[0] for ln in parent.lines("effects")}
        assert started == finished, f"cut off: {sorted(started - finished)}"
        assert {ln.split()[1] for ln in parent.lines("started")} <= {
            str(p) for p in parent.child_pids()
        }
        assert len(finished) + await queue_depth(amqp_url, f"{prefix}.svc") == 40
        assert "stopped svc: 2 processes" in parent.log.read_text()
