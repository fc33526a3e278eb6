"""`bus scheduler` replicas against a real broker: one leader, each instant fired once, failover.

Each test runs real `python -m bus.cli scheduler` processes with its own topology file and its
own lock queue (`BUS_SCHEDULER_LOCK`), so tests never fight over `bus.scheduler.lock`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import aio_pika
import aiormq
import httpx
import pytest
import yaml

from bus.scheduling.firings import instant_text
from bus.topology.model import from_dict
from demo.stubs import free_port
from tests.conftest import wait_for
from tests.integration.helpers import applied, topology_doc

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

ROOT = Path(__file__).resolve().parents[2]
TAKEOVER_LIMIT = 5.0  # seconds; measured ~1.0-1.5 s on RabbitMQ 3.10.8 (retry 1 s ± 25 %)


def scheduled_doc(prefix: str) -> dict[str, Any]:
    exchange = f"{prefix}.events"
    doc = topology_doc(
        prefix,
        {"sink": {"keys": ["tick.*"]}},
        events={"tick.second": {"exchange": exchange}},
        queue_type="classic",
    )
    doc["schedules"] = {"every-second": {"every": "1s", "event": "tick.second"}}
    return doc


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    async def leads(self, client: httpx.AsyncClient) -> bool | None:
        """True/False from its `bus_scheduler_leader` gauge; None while it does not answer."""
        try:
            text = (await client.get(f"http://127.0.0.1:{self.port}/metrics", timeout=1)).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith("bus_scheduler_leader "):
                return float(line.split()[1]) == 1.0
        return None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextmanager
def replicas(
    n: int, topo_file: Path, lock: str, amqp_url: str, logs: Path
) -> Iterator[list[Replica]]:
    env = {
        **os.environ,
        "BUS_URL": amqp_url,
        "BUS_TOPOLOGY": str(topo_file),
        "BUS_SCHEDULER_LOCK": lock,
    }
    started: list[Replica] = []
    files: list[IO[bytes]] = []
    try:
        for i in range(n):
            port, log = free_port(), logs / f"replica{i}.log"
            files.append(log.open("wb"))
            proc = subprocess.Popen(
                [sys.executable, "-m", "bus.cli", "scheduler", "--metrics-port", str(port)],
                env=env, cwd=ROOT, stdout=files[-1], stderr=subprocess.STDOUT,
            )  # fmt: skip
            started.append(Replica(proc, port, log))
        yield started
    finally:
        for r in started:
            if r.proc.poll() is None:
                r.proc.kill()
            r.proc.wait(10)
        for f in files:
            f.close()


@dataclass
class Seen:
    """Every delivery of the sink queue: (event id, arrival on the monotonic clock)."""

    deliveries: list[tuple[str, float]] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [i for i, _ in self.deliveries]

    def instants(self) -> list[datetime]:
        prefix = "schedule:every-second:"
        assert all(i.startswith(prefix) for i in self.ids()), f"unexpected ids: {self.ids()}"
        return sorted({parse(i.removeprefix(prefix)) for i in self.ids()})


def parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@asynccontextmanager
async def consuming(amqp_url: str, queue: str) -> AsyncIterator[Seen]:
    seen = Seen()
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        q = await channel.declare_queue(queue, passive=True)

        async def on_message(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            seen.deliveries.append((m.message_id or "", time.monotonic()))

        await q.consume(on_message, no_ack=True)
        yield seen
    finally:
        await conn.close()


async def delete_queues(amqp_url: str, *names: str) -> None:
    conn = await aio_pika.connect(amqp_url)
    try:
        for name in names:
            channel = await conn.channel()
            with suppress(aiormq.exceptions.AMQPError):
                await (await channel.get_underlay_channel()).queue_delete(name)
            if not channel.is_closed:
                await channel.close()
    finally:
        await conn.close()


async def leaders(client: httpx.AsyncClient, rs: list[Replica]) -> list[Replica]:
    answers = await asyncio.gather(*(r.leads(client) for r in rs))
    return [r for r, yes in zip(rs, answers, strict=True) if yes]


async def exactly_one_leader(client: httpx.AsyncClient, rs: list[Replica]) -> Replica | None:
    answers = await asyncio.gather(*(r.leads(client) for r in rs))
    if None in answers:
        return None  # not all serving yet
    found = [r for r, yes in zip(rs, answers, strict=True) if yes]
    return found[0] if len(found) == 1 else None


async def test_three_replicas_fire_each_instant_once_and_a_killed_leader_is_replaced_in_seconds(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    doc = scheduled_doc(prefix)
    topo_file = tmp_path / "topology.yaml"
    topo_file.write_text(yaml.safe_dump(doc))
    lock = f"{prefix}.scheduler.lock"
    topology = from_dict(doc, source=str(topo_file))
    async with (
        applied(amqp_url, topology),
        consuming(amqp_url, f"{prefix}.sink") as seen,
        httpx.AsyncClient() as client,
    ):
        try:
            with replicas(3, topo_file, lock, amqp_url, tmp_path) as rs:
                # Given three replicas, exactly one leads and fires every second
                first = await wait_for(
                    lambda: exactly_one_leader(client, rs), 20, "exactly one leader of three"
                )
                await wait_for(lambda: len(set(seen.ids())) >= 3, 10, "three firings")
                assert not [i for i, n in Counter(seen.ids()).items() if n > 1], (
                    f"a stable leader published duplicates: {seen.ids()}"
                )

                # When the leader is SIGKILLed just before an instant, so that the instant
                # falls in the leaderless window and must be caught up by the next leader
                await asyncio.sleep(_until_next_second(margin=0.05))
                first.proc.send_signal(signal.SIGKILL)
                killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
                standbys = [r for r in rs if r is not first]
                second = await wait_for(
                    lambda: exactly_one_leader(client, standbys), 10, "a standby to take over"
                )
                takeover = time.monotonic() - killed_at
                print(f"\nleader SIGKILLed; another took over in {takeover:.2f} s")
                # the new leader's first publish after the kill: the effect of the failover
                await wait_for(
                    lambda: any(t > killed_at + 0.2 for _, t in seen.deliveries), 10,
                    "a firing from the new leader",
                )  # fmt: skip
                gap = min(t for _, t in seen.deliveries if t > killed_at + 0.2) - killed_at
                print(f"first firing delivered {gap:.2f} s after the kill")
                count_after = len(set(seen.ids())) + 3
                await wait_for(
                    lambda: len(set(seen.ids())) >= count_after, 10, "three more firings"
                )

                # Then it took over in seconds, and exactly one replica leads
                assert takeover < TAKEOVER_LIMIT, f"takeover took {takeover:.2f} s"
                assert await leaders(client, rs) == [second]

                # And the standby stepping down on SIGTERM exits 0
                second.proc.send_signal(signal.SIGTERM)
                assert second.proc.wait(10) == 0, second.output()
        finally:
            await delete_queues(amqp_url, lock, f"{lock}.state", f"bus.state.{prefix}.sink")

    # Then no instant in the window was lost ...
    instants = seen.instants()
    missing = [a for a in _every_second(instants[0], instants[-1]) if a not in set(instants)]
    assert not missing, f"firings lost: {missing} (seen {len(instants)} instants)"
    # ... and the only duplicates (same id, so one effect downstream) are around the kill
    dupes = [i for i, n in Counter(seen.ids()).items() if n > 1]
    print(f"{len(instants)} instants, none lost; duplicates (same id): {dupes or 'none'}")
    for d in dupes:
        at = parse(d.removeprefix("schedule:every-second:"))
        assert abs((at - killed_wall).total_seconds()) <= TAKEOVER_LIMIT + 2, (
            f"duplicate {d} far from the failover at {killed_wall.isoformat()}"
        )
    assert len(dupes) <= 2, f"too many duplicates: {dupes}"


async def test_a_leader_stopped_with_sigterm_hands_over_and_exits_zero(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    doc = scheduled_doc(prefix)
    topo_file = tmp_path / "topology.yaml"
    topo_file.write_text(yaml.safe_dump(doc))
    lock = f"{prefix}.scheduler.lock"
    async with (
        applied(amqp_url, from_dict(doc, source=str(topo_file))),
        consuming(amqp_url, f"{prefix}.sink") as seen,
        httpx.AsyncClient() as client,
    ):
        try:
            with replicas(2, topo_file, lock, amqp_url, tmp_path) as rs:
                first = await wait_for(lambda: exactly_one_leader(client, rs), 20, "one leader")
                await wait_for(lambda: seen.ids(), 10, "a firing")

                first.proc.send_signal(signal.SIGTERM)
                stopped_at = time.monotonic()
                assert first.proc.wait(10) == 0, first.output()
                (other,) = [r for r in rs if r is not first]
                await wait_for(lambda: other.leads(client), 5, "the standby to take over")
                print(f"\nleader SIGTERMed; handover in {time.monotonic() - stopped_at:.2f} s")
                before = len(set(seen.ids()))
                await wait_for(lambda: len(set(seen.ids())) > before + 1, 10, "firings resume")
        finally:
            await delete_queues(amqp_url, lock, f"{lock}.state", f"bus.state.{prefix}.sink")
    instants = seen.instants()
    assert instants == _every_second(instants[0], instants[-1]), "a firing was lost in handover"


def _every_second(start: datetime, end: datetime) -> list[datetime]:
    return [start + timedelta(seconds=k) for k in range(int((end - start).total_seconds()) + 1)]


def _until_next_second(margin: float) -> float:
    """Seconds from now until *margin* before the next whole second."""
    wait = 1.0 - datetime.now(UTC).microsecond / 1e6 - margin
    return wait if wait > 0 else wait + 1.0


async def test_a_leader_after_downtime_fires_the_instants_nobody_fired_from_the_record(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    doc = scheduled_doc(prefix)
    topo_file = tmp_path / "topology.yaml"
    topo_file.write_text(yaml.safe_dump(doc))
    lock = f"{prefix}.scheduler.lock"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        applied(amqp_url, from_dict(doc, source=str(topo_file))),
        consuming(amqp_url, f"{prefix}.sink") as seen,
    ):
        try:
            # Given a leader that fired a few instants and was killed
            with replicas(1, topo_file, lock, amqp_url, tmp_path / "a") as (only,):
                await wait_for(lambda: len(seen.ids()) >= 2, 20, "two firings")
                only.proc.send_signal(signal.SIGKILL)
                only.proc.wait(5)
            last_before = seen.instants()[-1]
            # When nobody runs for three seconds, then a replica starts
            await asyncio.sleep(3)
            with replicas(1, topo_file, lock, amqp_url, tmp_path / "b") as (late,):
                await wait_for(
                    lambda: seen.instants()[-1] >= last_before + timedelta(seconds=6), 20,
                    "firings to resume",
                )  # fmt: skip
                late.proc.send_signal(signal.SIGTERM)
                assert late.proc.wait(10) == 0, late.output()
        finally:
            await delete_queues(amqp_url, lock, f"{lock}.state", f"bus.state.{prefix}.sink")
    # Then the instants of the downtime were fired late (catch-up within the handover window)
    instants = seen.instants()
    assert instants == _every_second(instants[0], instants[-1]), (
        f"instants lost in the downtime: {[instant_text(a) for a in instants]}"
    )
    assert "catching up" in late.output(), late.output()
