"""Seams between the runtime's pieces that a review found broken, on the real broker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import CollectorRegistry

from bus import Context, Publisher, Router
from bus.consume.runtime import Runtime
from bus.metrics import Metrics
from bus.stores import Claim, MemoryStore
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology
from tests.integration.proxy import Proxy


def ready_gauge(metrics: Metrics, subscriber: str) -> float | None:
    return metrics.registry.get_sample_value("bus_ready", {"subscriber": subscriber})


def consumed(metrics: Metrics, outcome: str) -> float | None:
    """`bus_consumed_total` of svc's order.placed with *outcome*."""
    labels = {"subscriber": "svc", "type": "order.placed", "outcome": outcome}
    return metrics.registry.get_sample_value("bus_consumed_total", labels)


async def test_bus_ready_follows_readiness_through_a_broker_outage(
    amqp_url: str, prefix: str
) -> None:
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"]}})
    metrics = Metrics(CollectorRegistry())
    proxy = await Proxy.to(amqp_url).start()
    async with applied(amqp_url, topology):
        rt = Runtime(topology, "svc", Router(), url=proxy.url(amqp_url), store=MemoryStore(),
                     metrics=metrics)  # fmt: skip
        await rt.start()
        try:
            assert ready_gauge(metrics, "svc") == 1.0
            proxy.refusing = True  # the broker is gone and stays gone for a while
            proxy.cut()
            await wait_for(lambda: not rt.ready, timeout=10, message="the runtime not ready")
            assert ready_gauge(metrics, "svc") == 0.0, "bus_ready must say 0 while /readyz is 503"
            proxy.refusing = False
            await wait_for(lambda: rt.ready, timeout=20, message="the runtime ready again")
            assert ready_gauge(metrics, "svc") == 1.0
        finally:
            await rt.stop(5)
        assert ready_gauge(metrics, "svc") == 0.0
    await proxy.close()


async def test_an_id_claimed_by_a_live_replica_past_the_wait_is_requeued_not_run(
    amqp_url: str, prefix: str
) -> None:
    """The holder (another replica) keeps its lease; we must neither run the handler beside it
    nor delete its lease, and once it completes our copy is a duplicate."""
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"]}})
    store = MemoryStore()
    runs: list[str] = []
    router = Router()

    @router.on("order.placed")
    async def effect(event: dict[str, Any], ctx: Context) -> None:
        runs.append(ctx.id)

    metrics = Metrics(CollectorRegistry())
    assert await store.claim("svc", "e-held", lease=300) is Claim.CLAIMED  # the live holder
    async with applied(amqp_url, topology):
        rt = Runtime(topology, "svc", router, url=amqp_url, store=store, metrics=metrics,
                     lease=0.2)  # fmt: skip
        await rt.start()
        try:
            async with Publisher(amqp_url, topology) as pub:
                await pub.publish("order.placed", {"order_id": "o-1"}, id="e-held")
            await asyncio.sleep(2.0)  # past the claim's wait (lease + 1 s) at least once
            assert runs == [], "the handler ran without a claim beside the live holder"
            assert await store.claim("svc", "e-held") is Claim.BUSY, "the holder's lease is gone"
            await store.complete("svc", "e-held")  # the holder finishes
            await wait_for(lambda: consumed(metrics, "duplicate"), timeout=10,
                           message="our copy acked as a duplicate")  # fmt: skip
            assert runs == []
        finally:
            await rt.stop(5)


async def test_stopping_an_idle_runtime_without_grace_drains_quietly(
    amqp_url: str, prefix: str, caplog: Any
) -> None:
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"]}})
    async with applied(amqp_url, topology):
        rt = Runtime(topology, "svc", Router(), url=amqp_url, store=MemoryStore(),
                     metrics=Metrics(CollectorRegistry()))  # fmt: skip
        await rt.start()
        assert await rt.stop(0) is True, "nothing was in flight: drained"
    assert not [r for r in caplog.records if "still running" in r.getMessage()]


async def test_a_handler_cut_off_by_a_lost_connection_runs_again_on_the_redelivery_at_once(
    amqp_url: str, prefix: str, fault_report: Any
) -> None:
    """aiormq cancels the handlers of a channel that closes; their claims must not stay held
    (and renewed by this live process): the broker's redelivery runs the handler, well within
    the default 30 s lease."""
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"]}})
    runs: list[int] = []
    router = Router()

    @router.on("order.placed")
    async def effect(event: dict[str, Any], ctx: Context) -> None:
        runs.append(ctx.attempt)
        if len(runs) == 1:
            await asyncio.sleep(60)  # in flight when the connection goes

    metrics = Metrics(CollectorRegistry())
    proxy = await Proxy.to(amqp_url).start()
    async with applied(amqp_url, topology):
        rt = Runtime(topology, "svc", router, url=proxy.url(amqp_url), store=MemoryStore(),
                     metrics=metrics)  # fmt: skip
        await rt.start()
        try:
            async with Publisher(amqp_url, topology) as pub:
                await pub.publish("order.placed", {"order_id": "o-1"}, id="e-cut")
            await wait_for(lambda: runs, timeout=10, message="the first run")
            cut = time.monotonic()
            proxy.cut()
            await wait_for(lambda: consumed(metrics, "ok"), timeout=15,
                           message="the redelivery handled (not requeued as claimed)")  # fmt: skip
            recovery = time.monotonic() - cut
            assert runs == [1, 1]
        finally:
            await rt.stop(5)
    await proxy.close()
    fault_report(scenario="connection cut under a running handler, 30 s lease: cut → redelivery "
                 "handled", sent=1, confirmed=1, handled=1, duplicates=0, lost=0,
                 seconds=round(recovery, 2))  # fmt: skip
