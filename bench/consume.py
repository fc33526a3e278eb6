"""Scenario 2, consume: drain N pre-published events, validating each into a pydantic model.

bus: a `Runtime` with a pydantic-annotated handler, the idempotency store (memory, then SQLite),
one ack per success. raw (tuned): an aio-pika consumer at the same prefetch that validates with
the same model (`model_validate_json`) and acks each message; with SQLite it records each id
(`INSERT OR IGNORE` + commit). naive (`bench.naive`): `queue.consume` with `json.loads` +
`model_validate` and one `message.ack()`, the same SQLite recording. FastStream (when
installed): a subscriber with the same model, acking after the handler.
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
    NAIVE,
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
    side_rates,
    split,
    topology,
)
from bench.consumers import RawSqlite, bus_consuming, raw_consuming
from bench.fs import fs_consuming
from bench.naive import naive_consuming
from bus.stores import MemoryStore, Store, open_store

NAME = "consume"
KEY = "bench.consumed"
STORES = ("mem", "sqlite")


async def run(env: Env) -> list[Row]:
    # FastStream, like raw aio-pika, has no idempotency store: it takes the memory row only
    mem_sides = (RAW, NAIVE, BUS, FASTSTREAM) if env.faststream else (RAW, NAIVE, BUS)
    sides = {"mem": mem_sides, "sqlite": (RAW, NAIVE, BUS)}
    names = [f"{side}_{store}" for store in STORES for side in sides[store]]
    topo = topology(
        new_prefix(), {s: [KEY] for s in names}, [KEY],
        queue_type=env.queue_type, prefetch=env.prefetch,
    )  # fmt: skip
    exchange = topo.subscriber(names[0]).bindings[0].exchange
    busy = dict.fromkeys(names, 0.0)
    per_round: dict[str, list[float]] = {name: [] for name in names}
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
                        took = await _drain(env, topo, name, q, chunk, Path(tmp))
                        busy[name] += took
                        per_round[name].append((chunk - 1) / took if took else 0.0)
                handled += chunk - 1  # first call to last: chunk - 1 intervals
    rows = []
    for store, label in (("mem", "memory"), ("sqlite", "SQLite")):
        of = {side: busy[f"{side}_{store}"] for side in sides[store]}
        rounds_of = {side: per_round[f"{side}_{store}"] for side in sides[store]}
        row = side_rates(NAME, f"validate + {label} store + ack", handled, of, rounds_of)
        row.judge(NAIVE, 1.25 if store == "mem" else 1.0, at_least=True)
        rows.append(row)
    if env.faststream:
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

    sqlite = name.endswith("_sqlite")
    raw_store = await RawSqlite.open(str(tmp / f"{name}.db")) if sqlite else None
    consuming = naive_consuming if name.startswith(NAIVE) else raw_consuming
    try:
        async with consuming(
            env.url, queue, Order, on_event, prefetch=env.prefetch, store=raw_store
        ):
            await counter.wait(deadline_for(n))
    finally:
        if raw_store is not None:
            await raw_store.close()
    return counter.busy_seconds
