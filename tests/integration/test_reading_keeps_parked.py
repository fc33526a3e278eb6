"""Reading a DLQ never removes what it parked, however often it is read: `bus dlq list`, the
ops function behind it, the UI's DLQ API and the depth/age gauge all take the messages and give
them back, and on RabbitMQ 4 every such return counts toward a quorum queue's delivery limit
(20 by default), past which the broker drops the message (a DLQ has no dead-letter target)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from bus.amqp.connection import connect_plain
from bus.metrics import Metrics
from bus.ops import dlq
from bus.ops.gauges import QueueGauges
from bus.settings import Settings
from bus.ui import UiConfig, create_app
from tests.conftest import wait_for
from tests.integration.helpers import queue_depth, topology_doc
from tests.integration.ui_kit import SUBS, three_parked
from tests.integration.ui_kit import ui_client as client

pytestmark = pytest.mark.rabbitmq4  # the point of it is RabbitMQ 4; it must hold on 3.10 too

PARKED = {"e-1", "e-2", "e-3"}


def bus_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", *args], env={**os.environ, **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_a_hundred_reads_of_the_dlq_keep_every_parked_message(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topo_file = tmp_path / "topology.yaml"
    topo_file.write_text(yaml.safe_dump(topology_doc(prefix, SUBS, delays=["100ms"])))
    env = {"BUS_URL": amqp_url, "BUS_TOPOLOGY": str(topo_file)}
    async with three_parked(amqp_url, prefix) as parked:
        sub = parked.topology.subscriber("email")
        settings = Settings(url=amqp_url, outbox_url=f"sqlite:///{tmp_path / 'no-outbox.db'}")
        app = create_app(UiConfig(settings, token=None, browse_ttl=0), parked.topology)
        reads = 0

        async def back() -> bool:
            return await queue_depth(amqp_url, parked.dlq) == 3

        async def settled() -> None:
            """A read's messages return to the queue a moment after it ends (a quorum queue
            applies the return through its log): wait for them before the next read."""
            await wait_for(back, timeout=10, message=f"3 parked messages after {reads} reads")

        for _ in range(3):  # the CLI: a process per read, so only a few
            listed = await asyncio.to_thread(bus_cli, "dlq", "list", "email", env=env)
            assert listed.returncode == 0, listed.stderr
            reads += 1
            await settled()
        conn = await connect_plain(amqp_url)
        try:
            for _ in range(35):  # what `bus dlq list` and `show` call
                assert {p.id for p in await dlq.browse(conn, sub)} == PARKED
                reads += 1
                await settled()
        finally:
            await conn.close()
        async with client(app) as c:
            for _ in range(35):  # the UI's DLQ page reads through this API
                page = (await c.get("/api/subscribers/email/dlq")).json()
                assert page["count"] == 3, f"after {reads} reads the DLQ shows {page['count']}"
                reads += 1
                await settled()
        gauges = QueueGauges(sub, amqp_url, Metrics(CollectorRegistry()), repeek=0)
        try:
            for _ in range(27):  # every refresh peeks at the head (repeek=0)
                await gauges.refresh()
                reads += 1
                await settled()
        finally:
            await gauges.stop()
        assert reads == 100
        assert await queue_depth(amqp_url, parked.dlq) == 3, (
            f"the DLQ lost messages to {reads} reads"
        )
        shown = await asyncio.to_thread(bus_cli, "dlq", "show", "email", "e-1", env=env)
        assert shown.returncode == 0, shown.stdout + shown.stderr
