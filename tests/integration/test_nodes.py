"""The private-node harness itself: nodes start on their own ports, a cluster replicates."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import aio_pika
import pytest

from tests.conftest import wait_for
from tests.integration.nodes import Node
from tests.integration.witness import ConnectionWitness

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)


async def test_private_cluster_runs_three_nodes_and_replicates_a_quorum_queue(
    cluster: list[Node], prefix: str
) -> None:
    status = json.loads(cluster[0].ctl("cluster_status", "--formatter", "json"))
    assert sorted(status["running_nodes"]) == sorted(n.name for n in cluster), status
    conn = await aio_pika.connect(cluster[1].url())
    try:
        channel = await conn.channel()
        await channel.declare_queue(
            f"{prefix}.q", durable=True, arguments={"x-queue-type": "quorum"}
        )
        members = cluster[2].ctl("list_queues", "-q", "name", "members")
        line = next(ln for ln in members.splitlines() if ln.startswith(f"{prefix}.q"))
        assert all(n.name in line for n in cluster), line
        await channel.queue_delete(f"{prefix}.q")
    finally:
        await conn.close()


def test_private_node_listens_on_its_own_port_not_the_machine_broker(private_node: Node) -> None:
    assert private_node.port != 5672
    listeners = json.loads(private_node.ctl("status", "--formatter", "json"))["listeners"]
    assert {"interface": "127.0.0.1", "port": private_node.port} in [
        {"interface": x["interface"], "port": x["port"]} for x in listeners
    ], listeners


async def test_the_witness_notices_a_broker_that_was_stopped(private_node: Node) -> None:
    """What guards the shared broker (conftest's `shared_broker_left_running`) really detects
    a `stop_app`: shown on the private node, never on the shared one."""
    with ConnectionWitness(private_node.url()) as witness:
        assert witness.problem() is None
        await asyncio.to_thread(private_node.ctl, "stop_app")
        try:
            await wait_for(lambda: witness.problem() is not None, message="the witness to notice")
        finally:
            await asyncio.to_thread(private_node.ctl, "start_app")
        assert "closed" in (witness.problem() or "")


def test_reaping_kills_an_orphan_vm_that_names_its_folder_only_in_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed run's node outlives it; its VM's command line does not name the folder (the
    environment does), and a reaper that looked at the command line only left it running."""
    from tests.integration import nodes

    base = tmp_path / f"{nodes.FOLDER_PREFIX}orphan"
    base.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    (base / "owner.pid").write_text(str(gone.pid))  # the run that started it is dead
    vm = subprocess.Popen(
        ["sleep", "60"], env={**os.environ, "RABBITMQ_MNESIA_BASE": str(base / "mnesia")}
    )
    try:
        (base / "node.pid").write_text(str(vm.pid))
        monkeypatch.setattr(nodes, "NODE_ROOT", tmp_path)
        # Popen can return before /proc/PID/environ shows the child's new environment (read at
        # once it lacked it 505 times in 3,000 here, 2,916 with both cores busy), and CI once
        # saw the reaper pass this VM by for it. An orphan from an earlier run is long past
        # that, so the test waits for it, as the reaper never needs to.
        deadline = time.monotonic() + 10
        while not nodes._is_node_of(vm.pid, base):
            assert time.monotonic() < deadline, Path(f"/proc/{vm.pid}/environ").read_bytes()
            time.sleep(0.01)
        assert nodes.reap_orphans() == [base.name]
        assert vm.wait(timeout=30) == -signal.SIGKILL
        assert not base.exists()
    finally:
        vm.kill()
        vm.wait()
