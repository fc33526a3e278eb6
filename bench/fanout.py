"""Scenario 3, fan-out: N events to three subscribers (3N handler calls), time until all done.

The three consumers run first; the clock starts when publishing starts and stops when the last of
the 3N handler calls returned. bus: `publish_many(window=W)` and three `Runtime`s (memory store).
raw: W confirms in flight and three aio-pika consumers (validate + ack). Same process, one run
after the other, each with its own routing key so neither sees the other's events.
"""

from __future__ import annotations

import contextlib
import time

from bench.common import (
    Counter,
    Env,
    Order,
    RawPublisher,
    Row,
    deadline_for,
    declared,
    min_ratio,
    new_prefix,
    order,
    topology,
)
from bench.consumers import OnEvent, bus_consuming, raw_consuming
from bus.publisher import Publisher
from bus.stores import MemoryStore
from bus.topology.model import Topology

NAME = "fanout"
BUS_KEY, RAW_KEY = "bench.fan_bus", "bench.fan_raw"
SUBS = ("a", "b", "c")


async def run(env: Env) -> list[Row]:
    n, window = env.counts.fanout, env.counts.window
    subs = {f"bus_{s}": [BUS_KEY] for s in SUBS} | {f"raw_{s}": [RAW_KEY] for s in SUBS}
    topo = topology(
        new_prefix(), subs, [BUS_KEY, RAW_KEY], queue_type=env.queue_type, prefetch=env.prefetch
    )
    exchange = topo.subscriber("bus_a").bindings[0].exchange
    payloads = [order(i) for i in range(n)]
    async with declared(env.url, topo):
        raw_s = await _raw(env, topo, exchange, payloads, window)
        bus_s = await _bus(env, topo, payloads, window)
    total = 3 * n
    bus, raw = total / bus_s, total / raw_s
    text, ok = min_ratio(bus, raw, 1.0)
    return [
        Row(NAME, f"{n} events x 3 subscribers, until all handled", "calls/s", bus, raw, True,
            text, ok, extra={"bus_seconds": bus_s, "raw_seconds": raw_s}),
    ]  # fmt: skip


async def _bus(env: Env, topo: Topology, payloads: list[dict[str, object]], window: int) -> float:
    counters = [Counter(len(payloads)) for _ in SUBS]
    async with contextlib.AsyncExitStack() as stack:
        for s, counter in zip(SUBS, counters, strict=True):
            await stack.enter_async_context(
                bus_consuming(env.url, topo, f"bus_{s}", Order, _hit(counter), MemoryStore())
            )
        pub = await stack.enter_async_context(Publisher(env.url, topo, source="bench"))
        started = time.perf_counter()
        await pub.publish_many([(BUS_KEY, p) for p in payloads], window=window)
        for c in counters:
            await c.wait(deadline_for(len(payloads)))
        return time.perf_counter() - started


async def _raw(
    env: Env, topo: Topology, exchange: str, payloads: list[dict[str, object]], window: int
) -> float:
    counters = [Counter(len(payloads)) for _ in SUBS]
    async with contextlib.AsyncExitStack() as stack:
        for s, counter in zip(SUBS, counters, strict=True):
            queue = topo.subscriber(f"raw_{s}").queue
            await stack.enter_async_context(
                raw_consuming(env.url, queue, Order, _hit(counter), prefetch=env.prefetch)
            )
        pub = await stack.enter_async_context(RawPublisher(env.url, exchange))
        started = time.perf_counter()
        await pub.publish_window(RAW_KEY, payloads, window)
        for c in counters:
            await c.wait(deadline_for(len(payloads)))
        return time.perf_counter() - started


def _hit(counter: Counter) -> OnEvent:
    async def on_event(event: Order) -> None:
        counter.hit()

    return on_event
