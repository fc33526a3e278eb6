"""RabbitMQ itself goes away (`rabbitmqctl stop_app`) mid-stream and comes back.

On a private node (tests/integration/nodes.py): the shared broker is never stopped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from bus.consume.runtime import Runtime
from bus.metrics import Metrics
from bus.ops.health import HealthServer
from bus.produce.publisher import Publisher
from bus.stores import MemoryStore
from demo.stubs import free_port
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology, queue_depth
from tests.integration.nodes import Node
from tests.integration.test_faults import Effects, outcomes

pytestmark = [pytest.mark.rabbitmq4, pytest.mark.timeout(300)]


@pytest.mark.slow
async def test_broker_restart_mid_stream_loses_nothing_and_readiness_follows_the_broker(
    private_node: Node, prefix: str, fault_report: Any
) -> None:
    url, n = private_node.url(), 5000
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"]}})
    effects = Effects()
    metrics = Metrics(CollectorRegistry())
    started = time.monotonic()
    async with applied(url, topology):
        rt = Runtime(
            topology, "svc", effects.router(), url=url, store=MemoryStore(), metrics=metrics
        )
        await rt.start()
        port = free_port()
        http = HealthServer(port, metrics.registry, asyncio.get_running_loop(), lambda: rt.ready,
                            host="127.0.0.1").start()  # fmt: skip
        pub = await Publisher(url, topology, deadline=120, metrics=metrics).connect()
        confirmed: list[str] = []
        readiness: list[int] = []

        async def ready() -> int:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code

        async def publish_all() -> None:
            async def one(i: int) -> None:
                confirmed.append(
                    await pub.publish("order.placed", {"order_id": str(i)}, id=f"r-{i}")
                )

            tasks = []
            for i in range(n):
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(0.001)
            await asyncio.gather(*tasks)

        async def restart() -> None:
            await wait_for(
                lambda: len(confirmed) > n // 4, timeout=30, message="a quarter confirmed"
            )
            readiness.append(await ready())
            await asyncio.to_thread(private_node.ctl, "stop_app")
            await wait_for(lambda: _is(ready(), 503), timeout=15, message="/readyz to turn 503")
            readiness.append(503)
            await asyncio.sleep(2)
            await asyncio.to_thread(private_node.ctl, "start_app")
            await asyncio.to_thread(private_node.ctl, "await_startup")

        try:
            await asyncio.gather(publish_all(), restart())
        finally:  # never leave the node down for the tests after this one
            await asyncio.to_thread(private_node.ctl, "start_app")
        await wait_for(lambda: _is(ready(), 200), timeout=30, message="/readyz back to 200")
        readiness.append(200)
        await wait_for(lambda: len(effects.runs) >= n, timeout=120, message=f"{n} effects")
        await wait_for(lambda: _empty(url, f"{prefix}.svc"), timeout=30, message="drain")
        await pub.close()
        await rt.stop(5)
        http.close()
    lost = set(confirmed) - set(effects.runs)
    fault_report(scenario="broker stop_app/start_app mid-stream", sent=n, confirmed=len(confirmed),
                 handled=len(effects.runs), duplicates=outcomes(metrics, "duplicate"),
                 lost=len(lost), seconds=round(time.monotonic() - started, 1))  # fmt: skip
    assert readiness == [200, 503, 200]
    assert len(confirmed) == n and not lost
    assert max(effects.runs.values()) == 1


async def _is(coro: Any, status: int) -> bool:
    try:
        return bool(await coro == status)
    except httpx.HTTPError:
        return False


async def _empty(url: str, queue: str) -> bool:
    return await queue_depth(url, queue) == 0
