"""Scenario 4, latency: publish -> handler time at a fixed rate (default 500/s for 10 s).

A ticker starts one publish every 1/rate seconds (each awaiting its own confirm, so a slow
confirm never delays the next send); the body carries `perf_counter()` at the call; the handler
records the difference. Publisher and consumer share one process, so the clocks agree. bus:
`Publisher.publish` + `Runtime` (memory store); raw: confirm-channel publish + aio-pika consumer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from bench.common import (
    Counter,
    Env,
    RawPublisher,
    Row,
    declared,
    max_ratio,
    new_prefix,
    percentile,
    topology,
)
from bench.consumers import bus_consuming, raw_consuming
from bus.publisher import Publisher
from bus.stores import MemoryStore
from bus.topology.model import Topology

NAME = "latency"
BUS_KEY, RAW_KEY = "bench.lat_bus", "bench.lat_raw"


class Tick(BaseModel):
    seq: int
    sent: float


async def run(env: Env) -> list[Row]:
    rate, seconds = env.counts.rate, env.counts.seconds
    n = max(1, int(rate * seconds))
    topo = topology(
        new_prefix(), {"bus": [BUS_KEY], "raw": [RAW_KEY]}, [BUS_KEY, RAW_KEY],
        queue_type=env.queue_type, prefetch=env.prefetch,
    )  # fmt: skip
    async with declared(env.url, topo):
        raw = await _raw(env, topo, n, rate)
        bus = await _bus(env, topo, n, rate)
    rows = []
    for label, p in (("p50", 50.0), ("p99", 99.0), ("max", 100.0)):
        b = percentile(bus, p) if p < 100 else max(bus)
        r = percentile(raw, p) if p < 100 else max(raw)
        target, ok = max_ratio(b, r, 1.2) if label == "p99" else ("", None)
        rows.append(
            Row(
                NAME,
                f"publish -> handler {label} at {rate}/s for {seconds:g}s",
                "ms",
                b,
                r,
                False,
                target,
                ok,
            )
        )
    return rows


async def _bus(env: Env, topo: Topology, n: int, rate: int) -> list[float]:
    latencies: list[float] = []
    counter = Counter(n)
    async with (
        bus_consuming(env.url, topo, "bus", Tick, _record(latencies, counter), MemoryStore()),
        Publisher(env.url, topo, source="bench") as pub,
    ):
        await _tick(n, rate, lambda data: pub.publish(BUS_KEY, data))
        await counter.wait(30)
    return latencies


async def _raw(env: Env, topo: Topology, n: int, rate: int) -> list[float]:
    latencies: list[float] = []
    counter = Counter(n)
    queue = topo.subscriber("raw").queue
    exchange = topo.subscriber("raw").bindings[0].exchange
    async with (
        raw_consuming(env.url, queue, Tick, _record(latencies, counter), prefetch=env.prefetch),
        RawPublisher(env.url, exchange) as pub,
    ):
        await _tick(n, rate, lambda data: pub.publish(RAW_KEY, data))
        await counter.wait(30)
    return latencies


def _record(latencies: list[float], counter: Counter) -> Callable[[Tick], Awaitable[None]]:
    async def on_event(tick: Tick) -> None:
        latencies.append((time.perf_counter() - tick.sent) * 1000)
        counter.hit()

    return on_event


async def _tick(n: int, rate: int, send: Callable[[dict[str, Any]], Awaitable[Any]]) -> None:
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
