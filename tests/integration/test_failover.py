"""A publisher with default settings rides out the SIGKILL of the node it is connected to,
whatever its calling pattern: nothing lost, no exception for the application.

A three-node quorum cluster; a publisher and a subscriber connected to node 1 (the first of
BUS_URL, the leader of every queue they use); ~100 events a second; node 1 is killed -9 and
the publisher keeps going. Every event id must reach the subscriber. The time from the kill to
the first confirm is printed in the fault-injection report at the end of the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bus import Context, Router
from bus.consume.runtime import Runtime
from bus.metrics import Metrics
from bus.produce.publisher import Publisher
from bus.produce.sync import SyncPublisher
from bus.stores import MemoryStore
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology
from tests.integration.nodes import Node, answers
from tests.integration.test_cluster import cluster_url

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

RATE = 100  # events a second
BEFORE, AFTER = 2.0, 12.0  # seconds of publishing before the kill, and after it


class Run:
    """What one publishing pattern did: when each event was confirmed, and the kill."""

    def __init__(self) -> None:
        self.confirmed: dict[str, float] = {}
        self.killed_at: float | None = None
        self.started = time.monotonic()

    def ids(self, start: int, count: int) -> list[str]:
        return [f"f-{i}" for i in range(start, start + count)]

    def sending(self) -> bool:
        """Go on: until AFTER seconds past the kill (or long enough that the kill failed)."""
        now = time.monotonic()
        if self.killed_at is None:
            return now - self.started < BEFORE + 60
        return now - self.killed_at < AFTER

    def recovery(self) -> float:
        assert self.killed_at is not None
        after = [t for t in self.confirmed.values() if t > self.killed_at]
        assert after, "nothing was confirmed after the kill"
        return min(after) - self.killed_at


async def one_by_one(pub: Publisher, run: Run) -> None:
    """`await pub.publish(...)`, one after the other."""
    i = 0
    while run.sending():
        (event_id,) = run.ids(i, 1)
        await pub.publish("order.placed", {"order_id": event_id}, id=event_id)
        run.confirmed[event_id] = time.monotonic()
        i += 1
        await asyncio.sleep(1 / RATE)


async def concurrent(pub: Publisher, run: Run) -> None:
    """A task per event, started at RATE without waiting for the earlier ones' confirms."""

    async def one(event_id: str) -> None:
        await pub.publish("order.placed", {"order_id": event_id}, id=event_id)
        run.confirmed[event_id] = time.monotonic()

    tasks: list[asyncio.Task[None]] = []
    i = 0
    while run.sending():
        (event_id,) = run.ids(i, 1)
        tasks.append(asyncio.create_task(one(event_id)))
        i += 1
        await asyncio.sleep(1 / RATE)
    await asyncio.gather(*tasks)


async def many(pub: Publisher, run: Run) -> None:
    """`publish_many` of ten events, ten times a second."""
    i = 0
    while run.sending():
        batch = run.ids(i, 10)
        events = [pub.event("order.placed", {"order_id": e}, id=e) for e in batch]
        await pub.publish_many(events)
        now = time.monotonic()
        run.confirmed.update(dict.fromkeys(batch, now))
        i += 10
        await asyncio.sleep(10 / RATE)


async def sync(pub: Publisher, run: Run) -> None:
    """`SyncPublisher.publish`, one after the other, from a thread of its own."""
    sp = SyncPublisher(Publisher(pub.url, pub.topology, source="failover-sync"))

    def loop() -> None:
        with sp:
            i = 0
            while run.sending():
                (event_id,) = run.ids(i, 1)
                sp.publish("order.placed", {"order_id": event_id}, id=event_id)
                run.confirmed[event_id] = time.monotonic()
                i += 1
                time.sleep(1 / RATE)

    await asyncio.to_thread(loop)


PATTERNS: dict[str, Callable[[Publisher, Run], Awaitable[None]]] = {
    "publish one by one": one_by_one,
    "concurrent publish calls": concurrent,
    "publish_many": many,
    "SyncPublisher": sync,
}


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("pattern", list(PATTERNS))
async def test_a_publisher_with_default_settings_rides_out_the_kill_of_its_node(
    cluster: list[Node], prefix: str, fault_report: Any, pattern: str
) -> None:
    a, b, c = cluster
    url = cluster_url(a, b, c)
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"], "replicas": 3}})
    handled: set[str] = set()
    router = Router()

    @router.on("order.placed")
    async def effect(event: dict[str, Any], ctx: Context) -> None:
        handled.add(ctx.id)

    run = Run()
    metrics = Metrics(CollectorRegistry())
    async with applied(url, topology):
        rt = Runtime(topology, "svc", router, url=url, store=MemoryStore(), metrics=metrics)
        await rt.start()
        pub = await Publisher(url, topology, metrics=metrics).connect()  # default settings

        async def kill() -> None:
            await wait_for(lambda: len(run.confirmed) >= BEFORE * RATE * 0.8, timeout=60,
                           message="events confirmed before the kill")  # fmt: skip
            run.killed_at = time.monotonic()
            a.kill_vm()
            await wait_for(lambda: not answers(a.port), timeout=10, message="node 1 gone")

        try:
            publishing = asyncio.create_task(PATTERNS[pattern](pub, run))
            await kill()
            await publishing  # raises whatever reached the application
            await wait_for(lambda: set(run.confirmed) <= handled, timeout=90,
                           message="every confirmed event handled")  # fmt: skip
        finally:
            await pub.close()
            await rt.stop(5)
            if a.process is None or a.process.poll() is not None:  # for the next scenario
                await asyncio.to_thread(a.start)
                await asyncio.to_thread(a.wait_started)
    recovery = run.recovery()
    print(f"\n{pattern}: kill -9 of the connected node -> first confirm {recovery:.2f} s")
    fault_report(scenario=f"failover, {pattern} (kill -> first confirm {recovery:.2f}s)",
                 sent=len(run.confirmed), confirmed=len(run.confirmed), handled=len(handled),
                 duplicates="-", lost=len(set(run.confirmed) - handled),
                 seconds=round(time.monotonic() - run.started, 1))  # fmt: skip
    assert len(run.confirmed) > (BEFORE + AFTER / 2) * RATE * 0.5, "the publisher kept going"
    assert recovery < 20, f"{recovery:.1f}s from the kill to the first confirm"
