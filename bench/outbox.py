"""Scenario outbox: the relay's throughput against `publish_many` of the same events.

bus: rows committed to `bus_outbox` (PostgreSQL, then SQLite) beforehand, untimed; timed from
the relay's first claim to the last row confirmed and deleted (`Relay.step` until the outbox
is empty: claim, check, publish with confirms, delete). reference ("raw" column):
`Publisher.publish_many(window=1000)` of the same events, on the same broker, in ABBA rounds.
The relay does strictly more (reads and deletes rows), so the target is 0.8x.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
from prometheus_client import CollectorRegistry

from bench.common import (
    BUS,
    RAW,
    Env,
    Row,
    abba,
    declared,
    new_prefix,
    order,
    purge,
    rate_row,
    split,
    topology,
)
from bus.metrics import Metrics
from bus.outbox import Outbox, open_outbox
from bus.outbox.relay import Relay
from bus.produce.publisher import Publisher
from bus.topology.model import Topology

NAME = "outbox"
KEY = "order.placed"
PG_SERVER = os.environ.get("BUS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
PER_TXN = 100  # rows per writing transaction


async def run(env: Env) -> list[Row]:
    n = env.counts.outbox
    prefix = new_prefix()
    topo = topology(
        prefix, {"sink": [KEY]}, [KEY], queue_type=env.queue_type, prefetch=env.prefetch
    )
    sink = topo.subscriber("sink").queue
    payloads = [order(i) for i in range(n)]
    rows: list[Row] = []
    async with declared(env.url, topo), Publisher(env.url, topo, source="bench") as pub:
        await pub.publish_many([(KEY, p) for p in payloads[:50]])  # warm both code paths
        await purge(env.url, sink)
        for label, database in (("PostgreSQL", _postgres), ("SQLite", _sqlite)):
            async with database() as url:
                seconds = await _rounds(env, topo, url, pub, sink, payloads)
            row = rate_row(
                NAME, f"relay, rows committed → confirmed + deleted ({label})", n,
                seconds[BUS], seconds[RAW], 0.8,
            )  # fmt: skip
            row.note = "raw column: Publisher.publish_many of the same events (window 1000)"
            rows.append(row)
    return rows


async def _rounds(
    env: Env, topo: Topology, url: str, pub: Publisher, sink: str, payloads: list[Any]
) -> dict[str, float]:
    outbox = await open_outbox(url)
    relay = Relay(outbox, topo, env.url, metrics=Metrics(CollectorRegistry()))
    writer = Outbox(topo, source="bench")
    seconds = {BUS: 0.0, RAW: 0.0}
    start = 0
    try:
        for size, order_ in zip(
            split(len(payloads), env.counts.rounds), abba(env.counts.rounds), strict=True
        ):
            items = payloads[start : start + size]
            start += size
            for side in order_:
                if side == BUS:
                    await _write(url, writer, items)
                    t0 = time.perf_counter()
                    moved = 0
                    while moved < len(items):
                        moved += await relay.step()
                    seconds[BUS] += time.perf_counter() - t0
                else:
                    t0 = time.perf_counter()
                    await pub.publish_many([(KEY, p) for p in items], window=1000)
                    seconds[RAW] += time.perf_counter() - t0
                await purge(env.url, sink)
    finally:
        await relay.publisher.close()
        await outbox.close()
    return seconds


async def _write(url: str, writer: Outbox, items: list[Any]) -> None:
    """Commit *items* to the outbox in transactions of PER_TXN rows (untimed)."""
    chunks = [items[i : i + PER_TXN] for i in range(0, len(items), PER_TXN)]
    if url.startswith("postgresql"):
        conn = await asyncpg.connect(url)
        try:
            for chunk in chunks:
                async with conn.transaction():
                    for data in chunk:
                        await writer.add(conn, KEY, data)
        finally:
            await conn.close()
        return
    async with aiosqlite.connect(url.removeprefix("sqlite:///")) as db:
        for chunk in chunks:
            for data in chunk:
                await writer.add(db, KEY, data)
            await db.commit()


@contextlib.asynccontextmanager
async def _postgres() -> AsyncIterator[str]:
    """A fresh database with `bus_outbox`, dropped afterwards."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_SERVER)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = f"{PG_SERVER.rsplit('/', 1)[0]}/{name}"
    try:
        await (await open_outbox(url, create=True)).close()
        yield url
    finally:
        admin = await asyncpg.connect(PG_SERVER)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def _sqlite() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'outbox.db'}"
        await (await open_outbox(url, create=True)).close()
        yield url
