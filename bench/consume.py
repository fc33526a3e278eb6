"""Scenario 2, consume: drain N pre-published events, validating each into a pydantic model.

bus: a `Runtime` with a pydantic-annotated handler, the idempotency store (memory, then SQLite),
one ack per success. raw: an aio-pika consumer at the same prefetch that validates with the same
model and acks each message; with SQLite it records each id (`INSERT OR IGNORE` + commit).
FastStream (when installed): a subscriber with the same model, acking after the handler.
The events are published before (untimed), in rounds taken in ABBA order; each drain is timed
from its first handler call to its last.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    BUS,
    FASTSTREAM,
    RAW,
    Counter,
    Env,
    Order,
    Row,
    abba,
    deadline_for,
    declared,
    fill,
    new_prefix,
    rate_row,
    split,
    topology,
)
from bench.consumers import RawSqlite, bus_consuming, raw_consuming
from bench.fs import fs_consuming
from bus.stores import MemoryStore, Store, open_store

NAME = "consume"
KEY = "bench.consumed"
STORES = ("mem", "sqlite")


async def run(env: Env) -> list[Row]:
    # FastStream, like raw aio-pika, has no idempotency store: it takes the memory row only
    sides = {"mem": env.sides, "sqlite": (RAW, BUS)}
    names = [f"{side}_{store}" for store in STORES for side in sides[store]]
    topo = topology(
        new_prefix(), {s: [KEY] for s in names}, [KEY],
        queue_type=env.queue_type, prefetch=env.prefetch,
    )  # fmt: skip
    exchange = topo.subscriber(names[0]).bindings[0].exchange
    busy = dict.fromkeys(names, 0.0)
    handled = 0
    rounds = env.counts.rounds
    async with declared(env.url, topo):
        with tempfile.TemporaryDirectory(prefix="bench-consume-") as tmp:
            for r, chunk in enumerate(split(env.counts.consume, rounds)):
                await fill(env.url, exchange, KEY, chunk)  # every queue gets the same chunk
                for store in STORES:
                    for side in abba(rounds, sides[store])[r]:
                        name = f"{side}_{store}"
                        q = topo.subscriber(name).queue
                        busy[name] += await _drain(env, topo, name, q, chunk, Path(tmp))
                handled += chunk - 1  # first call to last: chunk - 1 intervals
    rows = [
        rate_row(NAME, f"validate + {label} store + ack", handled, busy[f"bus_{s}"],
                 busy[f"raw_{s}"], 1.0 if s == "mem" else None)
        for s, label in (("mem", "memory"), ("sqlite", "SQLite"))
    ]  # fmt: skip
    if env.faststream:
        rows[0].faststream = handled / busy["faststream_mem"]
        rows[0].note = "FastStream, like raw aio-pika, validates and acks (it has no store)"
    return rows


async def _drain(env: Env, topo: Any, name: str, queue: str, n: int, tmp: Path) -> float:
    """Seconds from the first handler call to the last, draining *n* events from *queue*."""
    counter = Counter(n)

    async def on_event(event: Order) -> None:
        counter.hit()

    if name.startswith("bus"):
        store: Store = (
            MemoryStore() if name == "bus_mem" else await open_store(f"sqlite:///{tmp}/bus.db")
        )
        try:
            async with bus_consuming(env.url, topo, name, Order, on_event, store):
                await counter.wait(deadline_for(n))
        finally:
            await store.close()
        return counter.busy_seconds

    if name.startswith(FASTSTREAM):
        async with fs_consuming(env.url, queue, Order, on_event, prefetch=env.prefetch):
            await counter.wait(deadline_for(n))
        return counter.busy_seconds

    raw_store = await RawSqlite.open(str(tmp / "raw.db")) if name == "raw_sqlite" else None
    try:
        async with raw_consuming(
            env.url, queue, Order, on_event, prefetch=env.prefetch, store=raw_store
        ):
            await counter.wait(deadline_for(n))
    finally:
        if raw_store is not None:
            await raw_store.close()
    return counter.busy_seconds
