"""Event history: publish_many with history on and off, replay and read rates, backfill time.

`python -m bench.history [--events 10000] [--rounds 4] [--url URL]`

"off" and "on" publish the same events to two exchanges of one run, one of them keeping a
history (a stream bound with `#`), in ABBA order. Then the log of the "on" exchange is read
with `History.read` (the engine of `bus history --json`) and copied into a new subscriber's
queue with `replay` (the engine of `bus replay` and of backfill): events per second, and the
peak memory growth of each (ru_maxrss).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from typing import Any

from bench.common import abba, declared, new_prefix
from bus import Publisher
from bus.amqp.connection import connect_plain
from bus.history import History, Selection
from bus.history.replay import replay
from bus.topology.model import Topology, from_dict

OFF, ON = "off", "on"


def bench_topology(prefix: str) -> Topology:
    exchanges: dict[str, dict[str, Any]] = {f"{prefix}.{s}": {"type": "topic"} for s in (OFF, ON)}
    exchanges[f"{prefix}.{ON}"]["history"] = {"max_age": "1h"}
    return from_dict(
        {
            "version": 1,
            "defaults": {"queue_type": "quorum", "retry": {"delays": ["1h"]}},
            "exchanges": exchanges,
            "events": {f"{side}.placed": {"exchange": f"{prefix}.{side}"} for side in (OFF, ON)},
            "subscribers": {
                "sink": {
                    "handlers": "bench.common:EMPTY",
                    "queue": f"{prefix}.sink",
                    "bindings": [{"exchange": f"{prefix}.{OFF}", "keys": ["#"]}],
                },
                "late": {
                    "handlers": "bench.common:EMPTY",
                    "queue": f"{prefix}.late",
                    "bindings": [{"exchange": f"{prefix}.{ON}", "keys": ["#"]}],
                },
            },
        },
        source=f"bench:{prefix}",
    )


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(url: str, events: int, rounds: int) -> None:
    prefix = new_prefix()
    topo = bench_topology(prefix)
    async with declared(url, topo), Publisher(url, topo) as pub:
        rates: dict[str, list[float]] = {OFF: [], ON: []}
        per_round = events // rounds
        for (side,) in [(s,) for pair in abba(rounds // 2 or 1, (OFF, ON)) for s in pair]:
            batch = [(f"{side}.placed", {"order_id": f"o-{i}"}) for i in range(per_round)]
            started = time.perf_counter()
            await pub.publish_many(batch)
            rates[side].append(per_round / (time.perf_counter() - started))
        off, on = (sum(rates[s]) / len(rates[s]) for s in (OFF, ON))
        print(f"publish_many, history off: {off:,.0f}/s; on: {on:,.0f}/s; on/off {on / off:.2f}x")
        logged = sum(1 for _ in range(len(rates[ON]))) * per_round
        before = rss_mb()
        started = time.perf_counter()
        async with History(url) as h:
            n = 0
            async for _ in h.read(f"{prefix}.{ON}"):
                n += 1
        took = time.perf_counter() - started
        print(f"history read: {n:,} events in {took:.2f} s = {n / took:,.0f}/s "
              f"(expected {logged:,}); peak RSS +{rss_mb() - before:.1f} MB")  # fmt: skip
        conn = await connect_plain(url)
        try:
            before = rss_mb()
            started = time.perf_counter()
            out = await replay(conn, topo, topo.subscriber("late"), Selection())
            took = time.perf_counter() - started
        finally:
            await conn.close()
        print(f"replay: {out.total:,} events copied (confirmed) in {took:.2f} s = "
              f"{out.total / took:,.0f}/s; peak RSS +{rss_mb() - before:.1f} MB")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--url", default=os.environ.get("BUS_URL", "amqp://guest:guest@localhost:5672/")
    )
    a = parser.parse_args()
    asyncio.run(main(a.url, a.events, a.rounds))
