"""The refund saga of tests/saga_handlers.py on a real broker and store: its topology, one
replica of its subscriber, what the store says of an instance, and a store with instances."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bus.consume.runtime import Runtime
from bus.metrics import Metrics
from bus.produce.publisher import Publisher
from bus.sagas import Detail, open_saga_store
from bus.stores import open_store
from bus.topology.model import Topology, from_dict
from tests import saga_handlers
from tests.conftest import wait_for
from tests.integration.helpers import applied, topology_doc
from tests.integration.outbox_kit import fresh_postgres

KEYED = {
    "type": "object",
    "required": ["refund_id"],
    "properties": {"refund_id": {"type": "string"}},
}
TYPES = ["refund.requested", "payment.refund_requested", "payment.refunded", "refund.expired",
         "refund.completed", "refund.failed", "refund.counted"]  # fmt: skip
STEPS = ["refund.requested", "payment.refunded", "refund.expired", "refund.counted"]


def doc(prefix: str) -> dict[str, Any]:
    return topology_doc(
        prefix,
        {"refunds": {"keys": STEPS, "handlers": "tests.saga_handlers:router"},
         "audit": {"keys": ["#"]}},
        events={t: {"exchange": f"{prefix}.events", "schema": KEYED} for t in TYPES},
    )  # fmt: skip


@contextlib.asynccontextmanager
async def store_of(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty store of *kind* (`sqlite` or `postgresql`)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        async with fresh_postgres() as url:
            yield url


@contextlib.asynccontextmanager
async def replica(url: str, topology: Topology, store_url: str) -> AsyncIterator[Metrics]:
    """One `bus run refunds` in this process, on its own store connection."""
    store = await open_store(store_url)
    metrics = Metrics(CollectorRegistry())
    rt = Runtime(topology, "refunds", saga_handlers.router, url=url, store=store, metrics=metrics)
    try:
        await rt.start()
        yield metrics
    finally:
        await rt.stop(5)
        await store.close()


async def detail(store_url: str, key: str) -> Detail | None:
    store = await open_store(store_url)
    try:
        sagas = await open_saga_store(store)
        try:
            return await sagas.detail("refunds", "refund", key, 0.0)
        finally:
            await sagas.close()  # its own connection: an open one keeps the test process alive
    finally:
        await store.close()


async def status_of(store_url: str, key: str) -> tuple[str, dict[str, Any]] | None:
    found = await detail(store_url, key)
    return None if found is None else (found.instance.status, json.loads(found.instance.state))


async def two_refunds(url: str, prefix: str, store_url: str) -> Topology:
    """Run the refunds subscriber until its store holds r-1 (running, its 3-day timeout
    pending) and r-2 (completed: requested, then refunded)."""
    topology = from_dict(doc(prefix))
    async with applied(url, topology), replica(url, topology, store_url):
        async with Publisher(url, topology) as pub:
            await pub.publish("refund.requested", {"refund_id": "r-1", "amount": 40}, id="e-1")
            await pub.publish("refund.requested", {"refund_id": "r-2", "amount": 7}, id="e-2")
            await wait_for(lambda: _status(store_url, "r-2", "running"), 30, "r-2 started")
            await pub.publish("payment.refunded", {"refund_id": "r-2"}, id="e-3")
        await wait_for(lambda: _status(store_url, "r-2", "completed"), 30, "r-2 completed")
        await wait_for(lambda: _status(store_url, "r-1", "running"), 30, "r-1 started")
    return topology


async def _status(store_url: str, key: str, status: str) -> bool:
    found = await status_of(store_url, key)
    return found is not None and found[0] == status
