"""The ceiling beside the bus and the naive consumer: Node's amqplib draining the same queue.

`NODE_PATH=<a folder with amqplib installed> python -m bench.ceiling [--events 20000]
[--rounds 4] [--loop uvloop]` runs ABBA-style rounds of three sides on one quorum queue each
(filled untimed before each drain): `amqplib` (bench/amqplib_consume.js: JSON.parse and an ack,
nothing else), the naive aio-pika consumer and the bus's `Runtime`, as `bench.profile_consume`
runs them. It prints events/s (first delivery to last) per side and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

from bench.common import BUS, NAIVE, Counter, Order, deadline_for, declared, fill, new_prefix
from bench.common import topology as make_topology
from bench.consumers import bus_consuming
from bench.naive import naive_consuming
from bus.loop import run
from bus.stores import MemoryStore

KEY = "bench.ceiling"
NODE = "amqplib"
SCRIPT = Path(__file__).with_name("amqplib_consume.js")


async def node_drain(url: str, queue: str, n: int, prefetch: int) -> float:
    proc = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), url, queue, str(n), str(prefetch), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit("the amqplib consumer failed (is amqplib on NODE_PATH?)")
    return float(json.loads(out)["rate"])


async def main(args: argparse.Namespace) -> None:
    if shutil.which("node") is None:
        raise SystemExit("node is not installed: no amqplib ceiling")
    sides = (NODE, NAIVE, BUS)
    topo = make_topology(new_prefix(), {s: [KEY] for s in sides}, [KEY],
                         queue_type="quorum", prefetch=args.prefetch)  # fmt: skip
    exchange = topo.subscriber(NODE).bindings[0].exchange
    rates: dict[str, list[float]] = {s: [] for s in sides}
    async with declared(args.url, topo):
        for r in range(args.rounds):
            await fill(args.url, exchange, KEY, args.events)  # every side's queue gets them
            order = sides if r % 2 == 0 else tuple(reversed(sides))
            for side in order:
                queue = topo.subscriber(side).queue
                if side == NODE:
                    rates[side].append(
                        await node_drain(args.url, queue, args.events, args.prefetch)
                    )
                    continue
                counter = Counter(args.events)

                async def on_event(event: Order, counter: Counter = counter) -> None:
                    counter.hit()

                consuming = (
                    bus_consuming(args.url, topo, BUS, Order, on_event, MemoryStore())
                    if side == BUS
                    else naive_consuming(args.url, queue, Order, on_event, prefetch=args.prefetch)
                )
                async with consuming:
                    await counter.wait(deadline_for(args.events))
                rates[side].append((args.events - 1) / counter.busy_seconds)
            print(f"round {r + 1}: " + "  ".join(f"{s} {rates[s][-1]:,.0f}/s" for s in sides))
    mean = {s: sum(v) / len(v) for s, v in rates.items()}
    for s in sides:
        print(f"{s:8} {mean[s]:8,.0f} events/s (mean of {args.rounds})")
    print(f"bus/naive {mean[BUS] / mean[NAIVE]:.2f}  bus/amqplib {mean[BUS] / mean[NODE]:.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser("python -m bench.ceiling", description=__doc__)
    p.add_argument("--url", default=os.environ.get("BUS_URL", "amqp://guest:guest@localhost:5672/"))
    p.add_argument("--events", type=int, default=20_000, help="events per round and side")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--prefetch", type=int, default=32)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    return p.parse_args(argv)


if __name__ == "__main__":
    a = parse_args()
    os.environ["BUS_LOOP"] = a.loop
    print(f"loop: {a.loop}", file=sys.stderr)
    run(main(a))
