"""Scenario 3, fan-out: N events to three subscribers (3N handler calls), time until all done.

Both sides' three consumers run for the whole scenario, each side on its own routing key so
neither sees the other's events. In each round (ABBA order) one side publishes its share with
W confirms in flight; the clock runs from the first publish until the last of the three
subscribers' handler calls returned. bus: `publish_many(window=W)` and three `Runtime`s (memory
store). raw: a semaphore of W confirms and three aio-pika consumers (validate + ack).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import (
    BUS,
    RAW,
    Counter,
    Env,
    Order,
    RawPublisher,
    Row,
    abba,
    deadline_for,
    declared,
    min_ratio,
    new_prefix,
    order,
    split,
    topology,
)
from bench.consumers import OnEvent, bus_consuming, raw_consuming
from bus.publisher import Publisher
from bus.stores import MemoryStore

NAME = "fanout"
KEYS = {BUS: "bench.fan_bus", RAW: "bench.fan_raw"}
SUBS = ("a", "b", "c")

Send = Callable[[list[Any]], Awaitable[None]]


async def run(env: Env) -> list[Row]:
    n, window, rounds = env.counts.fanout, env.counts.window, env.counts.rounds
    subs = {f"{side}_{s}": [key] for side, key in KEYS.items() for s in SUBS}
    topo = topology(
        new_prefix(), subs, list(KEYS.values()), queue_type=env.queue_type, prefetch=env.prefetch
    )
    exchange = topo.subscriber("bus_a").bindings[0].exchange
    payloads = [order(i) for i in range(n)]
    counters = {side: [Counter(0) for _ in SUBS] for side in KEYS}
    seconds = {side: 0.0 for side in KEYS}
    async with declared(env.url, topo), contextlib.AsyncExitStack() as stack:
        for s, bus_c, raw_c in zip(SUBS, counters[BUS], counters[RAW], strict=True):
            await stack.enter_async_context(
                bus_consuming(env.url, topo, f"bus_{s}", Order, _hit(bus_c), MemoryStore())
            )
            queue = topo.subscriber(f"raw_{s}").queue
            await stack.enter_async_context(
                raw_consuming(env.url, queue, Order, _hit(raw_c), prefetch=env.prefetch)
            )
        pub = await stack.enter_async_context(Publisher(env.url, topo, source="bench"))
        raw = await stack.enter_async_context(RawPublisher(env.url, exchange))

        async def bus_send(items: list[Any]) -> None:
            await pub.publish_many([(KEYS[BUS], p) for p in items], window=window)

        async def raw_send(items: list[Any]) -> None:
            await raw.publish_window(KEYS[RAW], items, window)

        send: dict[str, Send] = {BUS: bus_send, RAW: raw_send}
        done = 0
        for size, sides in zip(split(n, rounds), abba(rounds), strict=True):
            items = payloads[done : done + size]
            done += size
            for side in sides:
                started = time.perf_counter()
                await send[side](items)
                for c in counters[side]:
                    await c.until(done, deadline_for(size))
                seconds[side] += time.perf_counter() - started
    total = 3 * n
    bus, raw_rate = total / seconds[BUS], total / seconds[RAW]
    text, ok = min_ratio(bus, raw_rate, 1.0)
    return [
        Row(NAME, f"{n} events x 3 subscribers, until all handled", "calls/s", bus, raw_rate,
            True, text, ok, extra={"bus_seconds": seconds[BUS], "raw_seconds": seconds[RAW]}),
    ]  # fmt: skip


def _hit(counter: Counter) -> OnEvent:
    async def on_event(event: Order) -> None:
        counter.hit()

    return on_event
