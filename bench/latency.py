"""Scenario 4, latency: publish -> handler time at a fixed rate (default 500/s for 10 s).

A ticker starts one publish every 1/rate seconds (each awaiting its own confirm, so a slow
confirm never delays the next send); the body carries `perf_counter()` at the call; the handler
records the difference. Publisher and consumer share one process, so the clocks agree. bus:
`Publisher.publish` + `Runtime` (memory store); raw: confirm-channel publish + aio-pika consumer;
naive: `bench.naive` (an `aio_pika.Message` with the envelope, `exchange.publish`, the naive
consumer); FastStream (when installed): `RabbitBroker.publish` + a subscriber. The first row
keeps each side's distribution for the CDF chart (`extra["cdf"]`: the 0.1 % … 100 % quantiles).
Both sides stay connected throughout and take turns in ABBA rounds, so a slow spell of the
machine (a p99 is the 50th-worst of 5,000) falls on both; a short warm-up of each is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from pydantic import BaseModel

from bench.common import (
    BUS,
    FASTSTREAM,
    NAIVE,
    RAW,
    Counter,
    Env,
    RawPublisher,
    Row,
    abba,
    declared,
    max_ratio,
    new_prefix,
    percentile,
    split,
    topology,
)
from bench.consumers import bus_consuming, raw_consuming
from bench.fs import FsPublisher, fs_consuming
from bench.naive import NaivePublisher, naive_consuming
from bus.produce.publisher import Publisher
from bus.stores import MemoryStore

NAME = "latency"
KEYS = {BUS: "bench.lat_bus", RAW: "bench.lat_raw", NAIVE: "bench.lat_naive",
        FASTSTREAM: "bench.lat_fs"}  # fmt: skip

Send = Callable[[dict[str, Any]], Coroutine[Any, Any, Any]]


class Tick(BaseModel):
    seq: int
    sent: float


async def run(env: Env) -> list[Row]:
    rate, seconds, rounds = env.counts.rate, env.counts.seconds, env.counts.rounds
    n = max(rounds, int(rate * seconds))
    sides = (RAW, NAIVE, BUS, FASTSTREAM) if env.faststream else (RAW, NAIVE, BUS)
    keys = {side: KEYS[side] for side in sides}
    topo = topology(
        new_prefix(), {side: [key] for side, key in keys.items()}, list(keys.values()),
        queue_type=env.queue_type, prefetch=env.prefetch,
    )  # fmt: skip
    latencies: dict[str, list[float]] = {side: [] for side in keys}
    counters = {side: Counter(0) for side in keys}
    exchange = topo.subscriber(RAW).bindings[0].exchange
    async with declared(env.url, topo), contextlib.AsyncExitStack() as stack:
        send: dict[str, Send] = {}
        for side in keys:
            on_event = _record(latencies[side], counters[side])
            queue = topo.subscriber(side).queue
            if side == BUS:
                await stack.enter_async_context(
                    bus_consuming(env.url, topo, side, Tick, on_event, MemoryStore())
                )
                pub = await stack.enter_async_context(Publisher(env.url, topo, source="bench"))
                send[side] = functools.partial(pub.publish, keys[side])
                continue
            if side == RAW:
                await stack.enter_async_context(
                    raw_consuming(env.url, queue, Tick, on_event, prefetch=env.prefetch)
                )
                raw = await stack.enter_async_context(RawPublisher(env.url, exchange))
                send[side] = functools.partial(raw.publish, keys[side])
                continue
            if side == NAIVE:
                await stack.enter_async_context(
                    naive_consuming(env.url, queue, Tick, on_event, prefetch=env.prefetch)
                )
                naive = await stack.enter_async_context(NaivePublisher(env.url, exchange))
                send[side] = functools.partial(naive.publish, keys[side])
                continue
            await stack.enter_async_context(
                fs_consuming(env.url, queue, Tick, on_event, prefetch=env.prefetch)
            )
            fs = await stack.enter_async_context(FsPublisher(env.url, exchange))
            send[side] = functools.partial(fs.publish, keys[side])
        gc.freeze()  # as `bus run` does once started; else one full collection (16 ms here)
        # decides the max of whichever side it lands on
        warm = max(1, rate // 10)  # a tenth of a second each: first frames and code paths
        for side in keys:
            await _tick(warm, rate, send[side])
            await counters[side].until(warm, 30)
            latencies[side].clear()
        expected = dict.fromkeys(keys, warm)
        for size, turn in zip(split(n, rounds), abba(rounds, sides), strict=True):
            for side in turn:
                await _tick(size, rate, send[side])
                expected[side] += size
                await counters[side].until(expected[side], 30)
    rows = []
    for label, p in (("p50", 50.0), ("p99", 99.0), ("max", 100.0)):
        at = {side: percentile(ms, p) if p < 100 else max(ms) for side, ms in latencies.items()}
        target, ok = max_ratio(at[BUS], at[RAW], 1.2) if label == "p99" else ("", None)
        row = Row(NAME, f"publish -> handler {label} at {rate}/s, {n} events", "ms", at[BUS],
                  at[RAW], False, target, ok)  # fmt: skip
        row.faststream = at.get(FASTSTREAM)
        row.naive = at.get(NAIVE)
        rows.append(row)
    rows[0].extra["cdf"] = {side: quantiles(ms) for side, ms in latencies.items()}
    return rows


def quantiles(ms: list[float], points: int = 1000) -> list[float]:
    """The 1/points … points/points quantiles of *ms* (rounded to µs): enough for a CDF."""
    if not ms:
        return []
    ordered = sorted(ms)
    last = len(ordered) - 1
    return [round(ordered[min(last, max(0, round(k * len(ordered) / points) - 1))], 3)
            for k in range(1, points + 1)]  # fmt: skip


def _record(latencies: list[float], counter: Counter) -> Callable[[Tick], Awaitable[None]]:
    async def on_event(tick: Tick) -> None:
        latencies.append((time.perf_counter() - tick.sent) * 1000)
        counter.hit()

    return on_event


async def _tick(n: int, rate: int, send: Send) -> None:
    """Start publish number i at start + i/rate; wait for all confirms at the end."""
    interval = 1.0 / rate
    tasks: set[asyncio.Task[Any]] = set()
    start = time.perf_counter()
    for i in range(n):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send({"seq": i, "sent": time.perf_counter()}))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
