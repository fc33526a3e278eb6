"""`bus run` runs on the loop BUS_LOOP chooses, and its start line in the log says which."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bus.topology.model import from_dict
from tests.conftest import wait_for
from tests.integration.helpers import applied, topology_doc

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
async def test_bus_run_logs_the_loop_it_runs_on(
    amqp_url: str, prefix: str, tmp_path: Path, choice: str
) -> None:
    doc = topology_doc(prefix, {"svc": {"keys": ["order.placed"]}})
    topo = tmp_path / "topology.yaml"
    topo.write_text(yaml.safe_dump(doc))
    log = tmp_path / "stderr.log"
    async with applied(amqp_url, from_dict(doc)):
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bus.cli", "run", "svc", "--grace-period", "5"],
                env={**os.environ, "BUS_URL": amqp_url, "BUS_TOPOLOGY": str(topo),
                     "BUS_STORE_URL": "memory://", "BUS_LOOP": choice},
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
            try:
                line = await wait_for(
                    lambda: _consuming_line(log), timeout=30, message="the start line"
                )
            finally:
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(proc.wait, 20)
    assert f", {choice} loop)" in line, line
    assert code == 0, log.read_text()


def _consuming_line(log: Path) -> str | None:
    return next((ln for ln in log.read_text().splitlines() if " consuming " in ln), None)
