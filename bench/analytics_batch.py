"""Analytics on PostgreSQL: per-message inserts against batch inserts, in the same run.

`python -m bench.analytics_batch [--events 5000] [--rounds 4] [--pg URL]`

Both sides drain the same number of pre-published events through a bus `Runtime` on the real
broker into the analytics tables (`subscribers/analytics/db.py`), each in a schema of its own:
"per-message" is `record()` (one transaction per event: the seen row, then the count) at the
topology's prefetch of 32; "batch" is the service's handler, `@router.on("#", batch=500,
flush="1s")` with `record_many()` (one transaction per batch, two `unnest` statements). Rounds
go in ABBA order; each drain is timed from the first handler call to the last event counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench.common import abba, declared, fill, new_prefix, topology
from bus import BatchContext, Context, Router
from bus.consume.runtime import Runtime
from bus.stores import MemoryStore
from subscribers.analytics.db import PostgresCounts

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
KEY = "bench.counted"
PER_MESSAGE, BATCH = "per-message", "batch"


def router_for(side: str, db: PostgresCounts, counted: list[float]) -> Router:
    router = Router()
    if side == PER_MESSAGE:

        @router.on("#")
        async def count(event: Any, ctx: Context) -> None:
            await db.record(ctx.id, ctx.type, ctx.time or datetime.now(UTC))
            counted.append(time.perf_counter())

    else:

        @router.on("#", batch=500, flush="1s")
        async def count_many(events: list[Any], ctx: BatchContext) -> None:
            now = datetime.now(UTC)
            await db.record_many([(c.id, c.type, c.time or now) for c in ctx.contexts])
            counted.extend([time.perf_counter()] * len(events))

    return router


async def drain(url: str, pg: str, side: str, n: int) -> float:
    """Events/s of one side draining *n* events into a fresh schema."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg)
    await admin.execute(f"CREATE SCHEMA {schema}")
    db = await PostgresCounts.open(f"{pg}?search_path={schema}")
    topo = topology(new_prefix(), {"analytics": [KEY]}, [KEY], queue_type="quorum", prefetch=32)
    exchange = topo.subscriber("analytics").bindings[0].exchange
    counted: list[float] = []
    try:
        async with declared(url, topo):
            await fill(url, exchange, KEY, n)
            rt = Runtime(topo, "analytics", router_for(side, db, counted), url=url,
                         store=MemoryStore())  # fmt: skip
            started = time.perf_counter()
            await rt.start()
            while len(counted) < n:
                if time.perf_counter() - started > 60 + n / 50:
                    raise TimeoutError(f"{side}: {len(counted)} of {n} counted")
                await asyncio.sleep(0.01)
            await rt.stop(10)
            total = int(
                await db.pool.fetchval("SELECT COALESCE(SUM(count), 0) FROM analytics_counts")
            )
            assert total == n, f"{side}: counted {total} of {n}"
    finally:
        await db.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()
    first = min(counted)
    return n / max(1e-9, max(counted) - first) if len(counted) > 1 else 0.0


async def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.analytics_batch")
    p.add_argument("--events", type=int, default=5000, help="events per round and side")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--url", default=os.environ.get("BUS_URL", "amqp://guest:guest@localhost:5672/"))
    p.add_argument("--pg", default=os.environ.get("BENCH_PG_URL", DEFAULT_PG))
    args = p.parse_args(argv)
    rates: dict[str, list[float]] = {PER_MESSAGE: [], BATCH: []}
    for order in abba(args.rounds, (PER_MESSAGE, BATCH)):
        for side in order:
            rates[side].append(await drain(args.url, args.pg, side, args.events))
    per, batch = (sum(rates[s]) / len(rates[s]) for s in (PER_MESSAGE, BATCH))
    print(f"analytics on PostgreSQL, {args.events} events x {args.rounds} rounds (ABBA)")
    for label, side, rate in (("per-message inserts", PER_MESSAGE, per),
                              ("batch inserts (500)", BATCH, batch)):  # fmt: skip
        print(f"  {label}: {rate:,.0f} events/s  rounds {[round(r) for r in rates[side]]}")
    verdict = "ok" if batch >= 3 * per else "MISSED"
    print(f"  batch / per-message: {batch / per:.2f}x (target >= 3x: {verdict})")


if __name__ == "__main__":
    asyncio.run(main())
