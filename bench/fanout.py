"""Scenario 3, fan-out: N events to three subscribers (3N handler calls), time until all done.

Both sides' three consumers run for the whole scenario, each side on its own routing key so
neither sees the other's events. In each round (ABBA order) one side publishes its share with
W confirms in flight; the clock runs from the first publish until the last of the three
subscribers' handler calls returned. bus: `publish_many(window=W)` and three `Runtime`s (memory
store). raw: a semaphore of W confirms and three aio-pika consumers (validate + ack).
FastStream (when installed): the same with `RabbitBroker.publish` and three subscribers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import (
    BUS,
    FASTSTREAM,
    RAW,
    Counter,
    Env,
    Order,
    RawPublisher,
    Row,
    Windowed,
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
from bench.fs import FsPublisher, fs_consuming
from bus.produce.publisher import Publisher
from bus.stores import MemoryStore
from bus.topology.model import Topology

NAME = "fanout"
KEYS = {BUS: "bench.fan_bus", RAW: "bench.fan_raw", FASTSTREAM: "bench.fan_fs"}
SUBS = ("a", "b", "c")

Send = Callable[[list[Any]], Awaitable[None]]


async def run(env: Env) -> list[Row]:
    n, window, rounds = env.counts.fanout, env.counts.window, env.counts.rounds
    keys = {side: KEYS[side] for side in env.sides}
    subs = {f"{side}_{s}": [key] for side, key in keys.items() for s in SUBS}
    topo = topology(
        new_prefix(), subs, list(keys.values()), queue_type=env.queue_type, prefetch=env.prefetch
    )
    exchange = topo.subscriber("bus_a").bindings[0].exchange
    payloads = [order(i) for i in range(n)]
    counters = {side: [Counter(0) for _ in SUBS] for side in keys}
    seconds = dict.fromkeys(keys, 0.0)
    async with declared(env.url, topo), contextlib.AsyncExitStack() as stack:
        send: dict[str, Send] = {}
        for side in keys:
            for s, counter in zip(SUBS, counters[side], strict=True):
                await stack.enter_async_context(_consuming(env, topo, side, s, counter))
            send[side] = await _sender(env, stack, topo, side, exchange, window)
        done = 0
        for size, sides in zip(split(n, rounds), abba(rounds, env.sides), strict=True):
            items = payloads[done : done + size]
            done += size
            for side in sides:
                started = time.perf_counter()
                await send[side](items)
                for c in counters[side]:
                    await c.until(done, deadline_for(size))
                seconds[side] += time.perf_counter() - started
    rate = {side: 3 * n / seconds[side] for side in keys}
    text, ok = min_ratio(rate[BUS], rate[RAW], 1.0)
    extra = {f"{side}_seconds": t for side, t in seconds.items()}
    row = Row(NAME, f"{n} events x 3 subscribers, until all handled", "calls/s", rate[BUS],
              rate[RAW], True, text, ok, extra=extra)  # fmt: skip
    row.faststream = rate.get(FASTSTREAM)
    return [row]


def _consuming(
    env: Env, topo: Topology, side: str, sub: str, counter: Counter
) -> contextlib.AbstractAsyncContextManager[Any]:
    name = f"{side}_{sub}"
    if side == BUS:
        return bus_consuming(env.url, topo, name, Order, _hit(counter), MemoryStore())
    queue = topo.subscriber(name).queue
    if side == RAW:
        return raw_consuming(env.url, queue, Order, _hit(counter), prefetch=env.prefetch)
    return fs_consuming(env.url, queue, Order, _hit(counter), prefetch=env.prefetch)


async def _sender(
    env: Env, stack: contextlib.AsyncExitStack, topo: Topology, side: str, exchange: str,
    window: int,
) -> Send:  # fmt: skip
    key = KEYS[side]
    if side == BUS:
        pub = await stack.enter_async_context(Publisher(env.url, topo, source="bench"))

        async def bus_send(items: list[Any]) -> None:
            await pub.publish_many([(key, p) for p in items], window=window)

        return bus_send
    publisher: Windowed
    if side == RAW:
        publisher = await stack.enter_async_context(RawPublisher(env.url, exchange))
    else:
        publisher = await stack.enter_async_context(FsPublisher(env.url, exchange))

    async def send(items: list[Any]) -> None:
        await publisher.publish_window(key, items, window)

    return send


def _hit(counter: Counter) -> OnEvent:
    async def on_event(event: Order) -> None:
        counter.hit()

    return on_event
