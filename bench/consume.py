"""Scenario 2, consume: drain N pre-published events, validating each into a pydantic model.

bus: a `Runtime` with a pydantic-annotated handler, the idempotency store (memory, then SQLite),
one ack per success. raw: an aio-pika consumer at the same prefetch that validates with the same
model and acks each message; with SQLite it records each id (`INSERT OR IGNORE` + commit).
Timed from connecting until the last handler call; the events are published before (untimed).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    Counter,
    Env,
    Order,
    Row,
    deadline_for,
    declared,
    fill,
    new_prefix,
    rate_row,
    topology,
)
from bench.consumers import RawSqlite, bus_consuming, raw_consuming
from bus.stores import MemoryStore, Store, open_store

NAME = "consume"
KEY = "bench.consumed"
SUBSCRIBERS = ("raw_mem", "bus_mem", "raw_sqlite", "bus_sqlite")


async def run(env: Env) -> list[Row]:
    n = env.counts.consume
    topo = topology(
        new_prefix(), {s: [KEY] for s in SUBSCRIBERS}, [KEY],
        queue_type=env.queue_type, prefetch=env.prefetch,
    )  # fmt: skip
    queue = {s: topo.subscriber(s).queue for s in SUBSCRIBERS}
    seconds: dict[str, float] = {}
    async with declared(env.url, topo):
        await fill(env.url, topo.subscriber("raw_mem").bindings[0].exchange, KEY, n)
        with tempfile.TemporaryDirectory(prefix="bench-consume-") as tmp:
            for name in SUBSCRIBERS:
                seconds[name] = await _drain(env, topo, name, queue[name], n, Path(tmp))
    return [
        rate_row(NAME, "validate + memory store + ack", n, seconds["bus_mem"],
                 seconds["raw_mem"], 1.0),
        rate_row(NAME, "validate + SQLite store + ack", n, seconds["bus_sqlite"],
                 seconds["raw_sqlite"]),
    ]  # fmt: skip


async def _drain(env: Env, topo: Any, name: str, queue: str, n: int, tmp: Path) -> float:
    counter = Counter(n)

    async def on_event(event: Order) -> None:
        counter.hit()

    if name.startswith("bus"):
        store: Store = (
            MemoryStore() if name == "bus_mem" else await open_store(f"sqlite:///{tmp}/bus.db")
        )

        try:
            started = time.perf_counter()
            async with bus_consuming(env.url, topo, name, Order, on_event, store):
                await counter.wait(deadline_for(n))
                return time.perf_counter() - started
        finally:
            await store.close()

    raw_store = await RawSqlite.open(str(tmp / "raw.db")) if name == "raw_sqlite" else None

    try:
        started = time.perf_counter()
        async with raw_consuming(
            env.url, queue, Order, on_event, prefetch=env.prefetch, store=raw_store
        ):
            await counter.wait(deadline_for(n))
            return time.perf_counter() - started
    finally:
        if raw_store is not None:
            await raw_store.close()
