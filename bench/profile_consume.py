"""Where consuming's time goes: CPU µs per event for `Runtime` beside the naive aio-pika consumer.

`python -m bench.profile_consume [--events 20000] [--rounds 4] [--loop uvloop] [--readers]
[--cprofile]` fills one queue per side with the same events (untimed), then drains them in ABBA
rounds: the bus side is a `Runtime` with a pydantic-annotated handler and the memory store, the
naive side `bench.naive`'s consumer (json + `model_validate` + one ack). `--readers` adds a third
side, the same `Runtime` on aiormq's own frame reader (`BUS_FRAME_READER=aiormq`), to weigh the
bus's reader (bus.amqp.reader). It prints wall events/s (first handler call to last) and this
process's CPU µs per event for each, and with `--cprofile` the functions taking the bus side's
time. CPU per event tells whether the client is the bottleneck: when both sides spend well
under the wall time per event on the CPU, the broker sets the pace.
For a sampling profile:
`py-spy record -o consume.svg -- python -m bench.profile_consume --only bus`.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import time
from contextlib import AbstractAsyncContextManager

from bench.common import (
    BUS,
    NAIVE,
    Counter,
    Order,
    abba,
    deadline_for,
    declared,
    fill,
    new_prefix,
    split,
    topology,
)
from bench.consumers import bus_consuming
from bench.naive import naive_consuming
from bench.profiling import parser, print_profile
from bus.loop import run
from bus.stores import MemoryStore

KEY = "bench.profiled"
BUS_STOCK = "bus-aiormq"  # the bus on aiormq's frame reader (--readers)


async def main(args: argparse.Namespace) -> None:
    every = (NAIVE, BUS_STOCK, BUS) if args.readers else (NAIVE, BUS)
    sides = [s for s in every if args.only in (None, s)]
    topo = topology(
        new_prefix(), {s: [KEY] for s in sides}, [KEY],
        queue_type=args.queue_type, prefetch=args.prefetch,
    )  # fmt: skip
    exchange = topo.subscriber(sides[0]).bindings[0].exchange
    wall = dict.fromkeys(sides, 0.0)
    cpu = dict.fromkeys(sides, 0.0)
    handled = 0
    profiler = cProfile.Profile() if args.cprofile else None
    async with declared(args.url, topo):
        for r, chunk in enumerate(split(args.events, args.rounds)):
            await fill(args.url, exchange, KEY, chunk)  # each side's queue gets the chunk
            for side in abba(args.rounds, sides)[r]:
                counter = Counter(chunk)

                async def on_event(event: Order, counter: Counter = counter) -> None:
                    counter.hit()

                consuming: AbstractAsyncContextManager[object]
                if side in (BUS, BUS_STOCK):
                    os.environ["BUS_FRAME_READER"] = "aiormq" if side == BUS_STOCK else "bus"
                    consuming = bus_consuming(args.url, topo, side, Order, on_event, MemoryStore())
                else:
                    queue = topo.subscriber(NAIVE).queue
                    consuming = naive_consuming(
                        args.url, queue, Order, on_event, prefetch=args.prefetch
                    )
                async with consuming:
                    c = time.process_time()
                    if profiler is not None and side == BUS:
                        profiler.enable()
                    await counter.wait(deadline_for(chunk))
                    if profiler is not None and side == BUS:
                        profiler.disable()
                    cpu[side] += time.process_time() - c
                wall[side] += counter.busy_seconds
            handled += chunk - 1  # first call to last: chunk - 1 intervals
    for side in sides:
        print(
            f"{side:10} {handled / wall[side]:8,.0f} events/s  "
            f"{wall[side] / handled * 1e6:6.1f} µs wall/event  "
            f"{cpu[side] / args.events * 1e6:6.1f} µs CPU/event"
        )
    for a, b in ((BUS, NAIVE), (BUS_STOCK, NAIVE), (BUS, BUS_STOCK)):
        if a in sides and b in sides:
            print(f"{a}/{b} (events/s): {wall[b] / wall[a]:.2f}  "
                  f"({b}'s CPU per event / {a}'s: {cpu[b] / cpu[a]:.2f})")  # fmt: skip
    print_profile(profiler, args.top)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser("python -m bench.profile_consume", __doc__)
    p.add_argument("--prefetch", type=int, default=32)
    p.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the loop both sides use"
    )
    p.add_argument("--readers", action="store_true", help="also the bus on aiormq's frame reader")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    os.environ["BUS_LOOP"] = args.loop
    print(f"loop: {args.loop}")
    run(main(args))
