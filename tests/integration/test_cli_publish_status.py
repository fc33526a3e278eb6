"""`bus publish` reading its data from a file or stdin with a correlation id, and
`bus status --watch` refreshing until interrupted, against the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.integration.helpers import applied, get_all, make_topology, topology_doc

SUBS = {"email": {"keys": ["order.placed"]}}


def bus(
    *args: str, env: dict[str, str], stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", *args], env={**os.environ, **env}, cwd=cwd,
        input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_publish_reads_data_from_a_file_or_stdin_and_sets_the_correlation_id(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topo = tmp_path / "topology.yaml"
    topo.write_text(yaml.safe_dump(topology_doc(prefix, SUBS)))
    (tmp_path / "order.json").write_text(json.dumps({"order_id": "from-file"}))
    env = {"BUS_URL": amqp_url, "BUS_TOPOLOGY": str(topo)}
    async with applied(amqp_url, make_topology(prefix, SUBS)):
        from_file = await asyncio.to_thread(
            bus, "publish", "order.placed", "--data", "@order.json", "--id", "f-1",
            "--correlation-id", "checkout-7", env=env, cwd=tmp_path,
        )  # fmt: skip
        assert from_file.returncode == 0, from_file.stderr
        assert from_file.stdout.strip() == "published order.placed f-1"
        from_stdin = await asyncio.to_thread(
            bus, "publish", "order.placed", "--data", "-", "--id", "s-1", env=env,
            stdin='{"order_id": "from-stdin"}',
        )  # fmt: skip
        assert from_stdin.returncode == 0, from_stdin.stderr
        got = await get_all(amqp_url, f"{prefix}.email")
    assert [(m.message_id, json.loads(m.body)["order_id"], m.correlation_id) for m in got] == [
        ("f-1", "from-file", "checkout-7"),
        ("s-1", "from-stdin", None),
    ]


async def test_status_watch_refreshes_until_interrupted_then_exits_0(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topo = tmp_path / "topology.yaml"
    topo.write_text(yaml.safe_dump(topology_doc(prefix, SUBS)))
    env = {**os.environ, "BUS_URL": amqp_url, "BUS_TOPOLOGY": str(topo)}
    async with applied(amqp_url, make_topology(prefix, SUBS)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "bus.cli", "status", "--watch", "--interval", "0.2", "--json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        snapshots = []
        deadline = time.monotonic() + 20
        while len(snapshots) < 3 and time.monotonic() < deadline:
            line = await asyncio.to_thread(proc.stdout.readline)
            if not line:
                break
            snapshots.append(json.loads(line))
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(proc.communicate, timeout=20)
    assert len(snapshots) == 3, err
    assert all(s[0]["queue"]["name"] == f"{prefix}.email" for s in snapshots)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
