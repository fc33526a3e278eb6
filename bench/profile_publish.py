"""Where `publish_many`'s time goes: CPU µs per event beside the naive aio-pika loop.

`python -m bench.profile_publish [--events 20000] [--rounds 4] [--cprofile]` publishes the same
events with `Publisher.publish_many` and with the naive loop (full envelope) in ABBA rounds,
prints wall events/s and this process's CPU µs per event for each, and with `--cprofile` the
functions taking the bus side's time (cumulative and own). CPU per event is less sensitive to
a shared machine than wall time. For a sampling profile of the same run:
`py-spy record -o publish.svg -- python -m bench.profile_publish --only bus`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import time
from typing import Any

from bench.common import BUS, abba, declared, new_prefix, order, purge, split, topology
from bench.naive import NaivePublisher
from bench.profiling import parser, print_profile
from bus.produce.publisher import Publisher

KEY = "bench.profiled"
NAIVE = "naive"


async def main(args: argparse.Namespace) -> None:
    prefix = new_prefix()
    topo = topology(prefix, {"sink": [KEY]}, [KEY], queue_type=args.queue_type, prefetch=32)
    sink = topo.subscriber("sink").queue
    payloads = [order(i) for i in range(args.events)]
    sides = [s for s in (NAIVE, BUS) if args.only in (None, s)]
    wall = dict.fromkeys(sides, 0.0)
    cpu = dict.fromkeys(sides, 0.0)
    profiler = cProfile.Profile() if args.cprofile else None
    async with (
        declared(args.url, topo),
        Publisher(args.url, topo, source="bench") as pub,
        NaivePublisher(args.url, f"{prefix}.events", envelope=True) as naive,
    ):

        async def send(side: str, items: list[Any]) -> None:
            if side == BUS:
                await pub.publish_many([(KEY, p) for p in items], window=args.window)
            else:
                await naive.publish_window(KEY, items, args.window)

        for side in sides:  # warm-up
            await send(side, payloads[:200])
        await purge(args.url, sink)
        start = 0
        for size, turn in zip(
            split(len(payloads), args.rounds), abba(args.rounds, sides), strict=True
        ):
            items = payloads[start : start + size]
            start += size
            for side in turn:
                c, w = time.process_time(), time.perf_counter()
                if profiler is not None and side == BUS:
                    profiler.enable()
                await send(side, items)
                if profiler is not None and side == BUS:
                    profiler.disable()
                wall[side] += time.perf_counter() - w
                cpu[side] += time.process_time() - c
                await purge(args.url, sink)
    n = args.events
    for side in sides:
        print(f"{side:6} {n / wall[side]:8,.0f} events/s  {cpu[side] / n * 1e6:6.1f} µs CPU/event")
    if len(sides) == 2:
        print(f"bus/naive (events/s): {wall[NAIVE] / wall[BUS]:.2f}")
    print_profile(profiler, args.top)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser("python -m bench.profile_publish", __doc__)
    p.add_argument("--window", type=int, default=1_000)
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
