"""Outbox databases and relays for the tests: a fresh PostgreSQL database or SQLite file per
test, relays in-process or as real `bus relay` processes, and an audit queue that counts what
reached the broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from bus.metrics import Metrics
from bus.outbox import open_outbox
from bus.outbox.relay import Relay
from bus.topology.model import Topology
from tests.integration.helpers import get_all

PG_SERVER = os.environ.get("BUS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.asynccontextmanager
async def fresh_postgres() -> AsyncIterator[str]:
    """The URL of a new, empty database on the test server; dropped afterwards."""
    name = f"bus_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_SERVER)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_SERVER.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(PG_SERVER)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def outbox_db(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """A created `bus_outbox` in a fresh database of *kind* (`postgresql` or `sqlite`)."""
    if kind == "postgresql":
        async with fresh_postgres() as url:
            await (await open_outbox(url, create=True)).close()
            yield url
    else:
        url = f"sqlite:///{tmp_path / 'outbox.db'}"
        await (await open_outbox(url, create=True)).close()
        yield url


@contextlib.asynccontextmanager
async def relaying(
    outbox_url: str, topology: Topology, amqp_url: str, **kw: Any
) -> AsyncIterator[Relay]:
    """An in-process relay running until the block ends."""
    outbox = await open_outbox(outbox_url)
    relay = Relay(outbox, topology, amqp_url, metrics=Metrics(_registry()), **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await outbox.close()


def _registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


def write_topology(topology_doc: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(topology_doc, sort_keys=False))
    return path


def relay_process(
    outbox_url: str, topology_file: Path, amqp_url: str, log: Path
) -> subprocess.Popen[bytes]:
    """`bus relay` as its own process (to SIGKILL it)."""
    env = {
        **os.environ,
        "BUS_URL": amqp_url,
        "BUS_TOPOLOGY": str(topology_file),
        "BUS_OUTBOX_URL": outbox_url,
        "BUS_RECONNECT_INTERVAL": "0.2",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "bus.cli", "relay"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def audited(amqp_url: str, queue: str) -> Counter[str]:
    """How many copies of each event id sit in *queue* (taken out, so call it once)."""
    return Counter(str(m.message_id) for m in await get_all(amqp_url, queue, timeout=2))
