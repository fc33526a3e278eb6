"""Real traffic through a Runtime, scraped over HTTP: every outcome is counted exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bus import Context, Publisher, Reject, Router
from bus.consume.runtime import Runtime
from bus.metrics import Metrics
from bus.ops.gauges import QueueGauges
from bus.ops.health import HealthServer
from bus.stores import MemoryStore
from bus.topology.model import Topology
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when the series was never created."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def make_router() -> Router:
    router = Router()

    @router.on("order.placed")
    async def placed(event: dict[str, Any], ctx: Context) -> None:
        pass

    @router.on("order.shipped")
    async def shipped(event: dict[str, Any], ctx: Context) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("carrier API down")  # succeeds on the retry

    @router.on("shipment.requested")
    async def shipment(event: dict[str, Any], ctx: Context) -> None:
        raise Reject("no such warehouse")

    return router


class Scraper:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def metrics(self) -> Samples:
        response = await self.client.get("/metrics")
        assert response.status_code == 200, response.text
        return parse(response.text)

    async def status(self, path: str) -> int:
        return (await self.client.get(path)).status_code


@pytest.fixture
async def served() -> AsyncIterator[tuple[Metrics, Scraper, list[Runtime]]]:
    """A fresh registry behind a HealthServer on a free port; ready while the runtime runs."""
    metrics = Metrics(CollectorRegistry())
    runtimes: list[Runtime] = []
    server = HealthServer(
        0,
        metrics.registry,
        asyncio.get_running_loop(),
        lambda: bool(runtimes) and runtimes[0].ready,
        host="127.0.0.1",
    ).start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as c:
            yield metrics, Scraper(c), runtimes
    finally:
        server.close()


async def test_scraped_metrics_count_each_outcome_and_probes_follow_the_runtime(
    amqp_url: str, prefix: str, served: tuple[Metrics, Scraper, list[Runtime]]
) -> None:
    metrics, scrape, runtimes = served
    topology: Topology = make_topology(prefix, {"shop": {}}, delays=["200ms", "400ms"])
    sub = topology.subscriber("shop")
    assert await scrape.status("/readyz") == 503, "ready before the runtime started"
    async with applied(amqp_url, topology):
        runtime = Runtime(
            topology, "shop", make_router(), url=amqp_url, store=MemoryStore(), metrics=metrics
        )
        runtimes.append(runtime)
        await runtime.start()
        try:
            assert await scrape.status("/readyz") == 200
            assert await scrape.status("/healthz") == 200
            async with (
                Publisher(amqp_url, topology, source="test", metrics=metrics) as pub,
                QueueGauges(sub, amqp_url, metrics, interval=0.1),
            ):
                for i in range(3):
                    await pub.publish("order.placed", {"order_id": f"o-{i}"}, id=f"o-{i}")
                await pub.publish("order.shipped", {"order_id": "o-0"}, id="s-0")
                await pub.publish("shipment.requested", {"order_id": "o-0"}, id="w-0")

                def consumed(etype: str, outcome: str) -> float:
                    return (
                        metrics.registry.get_sample_value(
                            "bus_consumed_total",
                            {"subscriber": "shop", "type": etype, "outcome": outcome},
                        )
                        or 0.0
                    )

                await wait_for(lambda: consumed("order.placed", "ok") == 3, message="3 ok")
                await pub.publish("order.placed", {"order_id": "o-0"}, id="o-0")  # again
                await wait_for(lambda: consumed("order.placed", "duplicate") == 1, message="dup")
                await wait_for(lambda: consumed("order.shipped", "ok") == 1, message="retry ok")
                await wait_for(lambda: consumed("shipment.requested", "dead") == 1, message="dead")
                await wait_for(
                    lambda: (
                        metrics.registry.get_sample_value("bus_queue_messages", {"queue": sub.dlq})
                        == 1
                    ),
                    message="the rejected event counted in the DLQ gauge",
                )

                samples = await scrape.metrics()
            shop = {"subscriber": "shop"}
            expected = {
                ("order.placed", "ok"): 3,
                ("order.placed", "duplicate"): 1,
                ("order.shipped", "retried"): 1,
                ("order.shipped", "ok"): 1,
                ("shipment.requested", "dead"): 1,
            }
            for etype in ("order.placed", "order.shipped", "shipment.requested"):
                for outcome in ("ok", "retried", "dead", "duplicate"):
                    got = value(samples, "bus_consumed_total", **shop, type=etype, outcome=outcome)
                    want = expected.get((etype, outcome), 0)
                    assert got == want, f"bus_consumed_total{{{etype},{outcome}}}: {got} != {want}"
            for etype, count in {
                "order.placed": 4,
                "order.shipped": 1,
                "shipment.requested": 1,
            }.items():
                got = value(samples, "bus_published_total", type=etype)
                assert got == count, f"bus_published_total{{{etype}}}: {got} != {count}"
            # the duplicate never ran the handler; the retried event ran it twice
            for etype, runs in {
                "order.placed": 3,
                "order.shipped": 2,
                "shipment.requested": 1,
            }.items():
                got = value(samples, "bus_handler_seconds_count", **shop, type=etype)
                assert got == runs, f"bus_handler_seconds_count{{{etype}}}: {got} != {runs}"
            assert value(samples, "bus_publish_confirm_seconds_count") == 6
            assert value(samples, "bus_ready", **shop) == 1
            assert value(samples, "bus_queue_messages", queue=sub.dlq) == 1
            assert value(samples, "bus_queue_messages", queue=sub.queue) == 0
            assert value(samples, "bus_dlq_oldest_message_age_seconds", queue=sub.dlq) >= 0
            assert await scrape.status("/readyz") == 200
        finally:
            await runtime.stop(5)

        assert await scrape.status("/readyz") == 503, "still ready after the runtime stopped"
        assert await scrape.status("/healthz") == 200, "the event loop is alive"
        assert value(await scrape.metrics(), "bus_ready", subscriber="shop") == 0
