"""Scenario 4, latency: publish -> handler time at a fixed rate (default 500/s for 10 s).

A ticker starts one publish every 1/rate seconds (each awaiting its own confirm, so a slow
confirm never delays the next send); the body carries `perf_counter()` at the call; the handler
records the difference. Publisher and consumer share one process, so the clocks agree. bus:
`Publisher.publish` + `Runtime` (memory store); raw: confirm-channel publish + aio-pika consumer.
Both sides stay connected throughout and take turns in ABBA rounds, so a slow spell of the
machine (a p99 is the 50th-worst of 5,000) falls on both; a short warm-up of each is dropped.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from pydantic import BaseModel

from bench.common import (
    BUS,
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
from bus.publisher import Publisher
from bus.stores import MemoryStore

NAME = "latency"
KEYS = {BUS: "bench.lat_bus", RAW: "bench.lat_raw"}

Send = Callable[[dict[str, Any]], Coroutine[Any, Any, Any]]


class Tick(BaseModel):
    seq: int
    sent: float


async def run(env: Env) -> list[Row]:
    rate, seconds, rounds = env.counts.rate, env.counts.seconds, env.counts.rounds
    n = max(rounds, int(rate * seconds))
    topo = topology(
        new_prefix(), {BUS: [KEYS[BUS]], RAW: [KEYS[RAW]]}, list(KEYS.values()),
        queue_type=env.queue_type, prefetch=env.prefetch,
    )  # fmt: skip
    latencies: dict[str, list[float]] = {BUS: [], RAW: []}
    counters = {BUS: Counter(0), RAW: Counter(0)}
    exchange = topo.subscriber(RAW).bindings[0].exchange
    async with (
        declared(env.url, topo),
        bus_consuming(env.url, topo, BUS, Tick, _record(latencies[BUS], counters[BUS]),
                      MemoryStore()),
        raw_consuming(env.url, topo.subscriber(RAW).queue, Tick,
                      _record(latencies[RAW], counters[RAW]), prefetch=env.prefetch),
        Publisher(env.url, topo, source="bench") as pub,
        RawPublisher(env.url, exchange) as raw,
    ):  # fmt: skip
        send: dict[str, Send] = {
            BUS: lambda data: pub.publish(KEYS[BUS], data),
            RAW: lambda data: raw.publish(KEYS[RAW], data),
        }
        gc.freeze()  # as `bus run` does once started; else one full collection (16 ms here)
        # decides the max of whichever side it lands on
        warm = max(1, rate // 10)  # a tenth of a second each: first frames and code paths
        for side in (BUS, RAW):
            await _tick(warm, rate, send[side])
            await counters[side].until(warm, 30)
            latencies[side].clear()
        expected = dict.fromkeys(KEYS, warm)
        for size, sides in zip(split(n, rounds), abba(rounds), strict=True):
            for side in sides:
                await _tick(size, rate, send[side])
                expected[side] += size
                await counters[side].until(expected[side], 30)
    bus, raw_ms = latencies[BUS], latencies[RAW]
    rows = []
    for label, p in (("p50", 50.0), ("p99", 99.0), ("max", 100.0)):
        b = percentile(bus, p) if p < 100 else max(bus)
        r = percentile(raw_ms, p) if p < 100 else max(raw_ms)
        target, ok = max_ratio(b, r, 1.2) if label == "p99" else ("", None)
        rows.append(
            Row(NAME, f"publish -> handler {label} at {rate}/s, {n} events", "ms", b, r, False,
                target, ok)
        )  # fmt: skip
    return rows


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
