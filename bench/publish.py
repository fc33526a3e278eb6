"""Scenario 1, publish: awaited one-by-one publishing, then windowed bulk publishing.

bus: `Publisher.publish` (checks the type, encodes CloudEvents headers, waits for the confirm)
and `Publisher.publish_many(window=W)`. raw (tuned): `exchange.publish(mandatory=True)` on a
confirm channel, awaited one by one, then with at most W confirms outstanding (a semaphore).
naive (`bench.naive`): `aio_pika.Message` objects, awaited one by one, then `asyncio.gather` in
windows of W, with the bus's envelope (the target's reference) and, in bulk, bare as well.
FastStream (when installed): `RabbitBroker.publish` the same two ways. The events go out in
rounds taken in ABBA order; the sink queue is purged between rounds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import (
    BUS,
    FASTSTREAM,
    NAIVE,
    NAIVE_BARE,
    RAW,
    Env,
    RawPublisher,
    Row,
    abba,
    declared,
    new_prefix,
    order,
    purge,
    side_rates,
    split,
    timed,
    topology,
)
from bench.fs import FsPublisher
from bench.naive import NaivePublisher
from bus.produce.publisher import Publisher

NAME = "publish"
KEY = "bench.published"

Send = Callable[[list[Any]], Awaitable[None]]


async def run(env: Env) -> list[Row]:
    n, window = env.counts.publish, env.counts.window
    prefix = new_prefix()
    topo = topology(
        prefix, {"sink": [KEY]}, [KEY], queue_type=env.queue_type, prefetch=env.prefetch
    )
    sink = topo.subscriber("sink").queue
    payloads = [order(i) for i in range(n)]
    async with (
        declared(env.url, topo),
        Publisher(env.url, topo, source="bench") as pub,
        RawPublisher(env.url, f"{prefix}.events") as raw,
        NaivePublisher(env.url, f"{prefix}.events", envelope=True) as naive,
        NaivePublisher(env.url, f"{prefix}.events", envelope=False) as bare,
        contextlib.AsyncExitStack() as stack,
    ):
        publishers: dict[str, Any] = {BUS: _BusWindow(pub), RAW: raw, NAIVE: naive}
        if env.faststream:
            fs = await stack.enter_async_context(FsPublisher(env.url, f"{prefix}.events"))
            publishers[FASTSTREAM] = fs
        for p in [*publishers.values(), bare]:  # first frames, connection buffers, code paths
            await _one_by_one(p)(payloads[:50])
        await purge(env.url, sink)
        one = await _rounds(env, sink, payloads, {s: _one_by_one(p) for s, p in publishers.items()})
        publishers[NAIVE_BARE] = bare  # bulk only: the issue's reference for the headers' cost
        many = await _rounds(
            env, sink, payloads, {s: _windowed(p, window) for s, p in publishers.items()}
        )
    one_row = side_rates(NAME, "publish, awaited one by one", n, one, one["rounds"])
    many_row = side_rates(NAME, f"publish_many, window {window}", n, many, many["rounds"])
    many_row.judge(NAIVE, 1.0, at_least=True)

    def cpu(side: str) -> float | None:
        return many[f"cpu:{side}"] / n * 1e6 if f"cpu:{side}" in many else None

    cpu_row = Row(NAME, "publish_many, CPU of this process per event", "µs", cpu(BUS) or 0.0,
                  cpu(RAW) or 0.0, False, faststream=cpu(FASTSTREAM), naive=cpu(NAIVE),
                  naive_bare=cpu(NAIVE_BARE))  # fmt: skip
    return [one_row, many_row, cpu_row]


class _BusWindow:
    """The bus publisher with the raw side's `publish_window`: `publish_many`."""

    def __init__(self, pub: Publisher) -> None:
        self.pub = pub

    async def publish(self, key: str, data: Any) -> None:
        await self.pub.publish(key, data)

    async def publish_window(self, key: str, items: list[Any], window: int) -> None:
        await self.pub.publish_many([(key, p) for p in items], window=window)


def _one_by_one(p: Any) -> Send:
    async def send(items: list[Any]) -> None:
        for data in items:
            await p.publish(KEY, data)

    return send


def _windowed(p: Any, window: int) -> Send:
    async def send(items: list[Any]) -> None:
        await p.publish_window(KEY, items, window)

    return send


async def _rounds(
    env: Env,
    sink: str,
    payloads: list[Any],
    send: dict[str, Send],
) -> dict[str, Any]:
    """Seconds per side to send all *payloads*, in ABBA rounds; CPU seconds of this process
    meanwhile under `cpu:<side>` (one side runs at a time); each round's events/s per side
    under `rounds`."""
    sides = [s for s in (RAW, NAIVE, NAIVE_BARE, BUS, FASTSTREAM) if s in send]
    seconds: dict[str, Any] = dict.fromkeys(sides, 0.0) | {f"cpu:{s}": 0.0 for s in sides}
    per_round: dict[str, list[float]] = {s: [] for s in sides}
    start = 0
    rounds = env.counts.rounds
    for size, first_second in zip(split(len(payloads), rounds), abba(rounds, sides), strict=True):
        items = payloads[start : start + size]
        start += size
        for side in first_second:
            cpu = time.process_time()
            took = await timed(send[side](items))
            seconds[side] += took
            seconds[f"cpu:{side}"] += time.process_time() - cpu
            per_round[side].append(size / took)
            await purge(env.url, sink)
    seconds["rounds"] = per_round
    return seconds
