"""The bus contract (tests/bus_contract.py) on the real RabbitMQ: `Runtime`s and a `Publisher`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry

from bus import BatchContext, Context, Publisher, Router, SyncContext
from bus.amqp.connection import connect_plain
from bus.consume.router import Executor, Handler
from bus.consume.runtime import Runtime
from bus.envelope import decode_body
from bus.metrics import Metrics
from bus.stores import MemoryStore
from bus.testing import Handled, Parked
from bus.topology import apply as applier
from bus.topology.model import Topology, from_dict
from tests.bus_contract import BusContract, OpenBus
from tests.integration.helpers import applied, get_all

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

QUIET_POLLS = 4  # consecutive polls 50 ms apart with nothing ready, on the ladder or running


def recording(router: Router, into: list[Handled]) -> Router:
    """*router*'s handlers (same patterns, names, annotations), noting each run that returned."""
    out = Router()

    def wrap(h: Handler) -> Any:
        @functools.wraps(h.func)
        async def run(event: Any, ctx: Context) -> None:
            await h.func(event, ctx)
            into.append(Handled(ctx.type, ctx.id, ctx.attempt))

        return run

    def wrap_batch(h: Handler) -> Any:
        @functools.wraps(h.func)
        async def run(events: list[Any], ctx: BatchContext) -> None:
            await h.func(events, ctx)
            into.extend(Handled(c.type, c.id, c.attempt)
                        for i, c in enumerate(ctx.contexts) if i not in ctx.rejected)  # fmt: skip

        return run

    def wrap_sync(h: Handler) -> Any:  # a plain def stays one: it runs in a thread
        @functools.wraps(h.func)
        def run(event: Any, ctx: SyncContext) -> None:
            h.func(event, ctx)
            into.append(Handled(ctx.type, ctx.id, ctx.attempt))

        return run

    for h in router.handlers:
        if h.executor is Executor.THREAD:
            out.on(h.pattern, name=h.name)(wrap_sync(h))
        elif h.batch is None:
            out.on(h.pattern, name=h.name)(wrap(h))
        else:
            out.on(h.pattern, name=h.name, batch=h.batch, flush=f"{round(h.flush * 1000)}ms")(
                wrap_batch(h)
            )
    return out


class BrokerDriver:
    def __init__(self, url: str, topology: Topology, conn: AbstractRobustConnection) -> None:
        self.url = url
        self.topology = topology
        self.conn = conn
        self.metrics = Metrics(CollectorRegistry())
        self.runtimes: dict[str, Runtime] = {}
        self.records: dict[str, list[Handled]] = {}
        self.dlq: dict[str, list[Parked]] = {n: [] for n in topology.subscriber_names}
        self.publisher = Publisher(url, topology, source="test", metrics=self.metrics)

    async def start(self, routers: dict[str, Router]) -> None:
        store = MemoryStore()
        for name, router in routers.items():
            self.records[name] = []
            rt = Runtime(self.topology, name, recording(router, self.records[name]),
                         url=self.url, store=store, metrics=self.metrics)  # fmt: skip
            await rt.start()
            self.runtimes[name] = rt
        await self.publisher.connect()

    async def stop(self) -> None:
        await self.publisher.close()
        for rt in self.runtimes.values():
            await rt.stop(5)

    async def publish(self, event_type: str, data: Any, *, id: str | None = None) -> str:
        return await self.publisher.publish(event_type, data, id=id)

    async def settle(self, timeout: float = 30.0) -> None:
        """Until nothing is ready, on a retry queue or running for a while; then read DLQs."""
        queues = [q for s in self.topology.subscribers() for q in (s.queue, *s.retry_queues)]
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < QUIET_POLLS:
            if time.monotonic() > deadline:
                pytest.fail(f"the bus did not settle within {timeout:.0f}s", pytrace=False)
            depths = [await applier.queue_depth(self.conn, q) for q in queues]
            busy = any(depths) or any(rt.inflight for rt in self.runtimes.values())
            quiet = 0 if busy else quiet + 1
            await asyncio.sleep(0.05)
        for sub in self.topology.subscribers():
            for m in await get_all(self.url, sub.dlq, timeout=0.5):
                headers = dict(m.headers)
                try:
                    data = decode_body(m.body)
                except Exception:
                    data = m.body
                self.dlq[sub.name].append(Parked(m.message_id or "", m.type or "",
                                                 str(headers.get("bus-dead-reason")), headers,
                                                 data))  # fmt: skip

    def handled(self, subscriber: str) -> list[Handled]:
        return list(self.records[subscriber])

    def parked(self, subscriber: str) -> list[Parked]:
        return list(self.dlq[subscriber])

    def duplicate_count(self, subscriber: str) -> int:
        total = 0.0
        for metric in self.metrics.registry.collect():
            for s in metric.samples:
                if (s.name == "bus_consumed_total" and s.labels.get("outcome") == "duplicate"
                        and s.labels.get("subscriber") == subscriber):  # fmt: skip
                    total += s.value
        return int(total)


class TestBrokerContract(BusContract):
    @pytest.fixture
    def open_bus(self, amqp_url: str) -> OpenBus:
        @contextlib.asynccontextmanager
        async def open_broker(
            doc: dict[str, Any], routers: dict[str, Router]
        ) -> AsyncIterator[BrokerDriver]:
            topology = from_dict(doc, source="contract")
            async with applied(amqp_url, topology):
                conn = await connect_plain(amqp_url)
                driver = BrokerDriver(amqp_url, topology, conn)
                try:
                    await driver.start(routers)
                    yield driver
                finally:
                    await driver.stop()
                    await conn.close()

        return open_broker
