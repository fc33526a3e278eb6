"""Scenario 1, publish: awaited one-by-one publishing, then windowed bulk publishing.

bus: `Publisher.publish` (checks the type, encodes CloudEvents headers, waits for the confirm)
and `Publisher.publish_many(window=W)`. raw: `exchange.publish(mandatory=True)` on a confirm
channel, awaited one by one, then with at most W confirms outstanding (a semaphore); FastStream
(when installed): `RabbitBroker.publish` the same two ways. The events
go out in rounds taken in ABBA order; the sink queue is purged between rounds.
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
    Env,
    RawPublisher,
    Row,
    abba,
    declared,
    new_prefix,
    order,
    purge,
    rate_row,
    split,
    timed,
    topology,
)
from bench.fs import FsPublisher
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
        contextlib.AsyncExitStack() as stack,
    ):
        publishers: dict[str, Any] = {BUS: _BusWindow(pub), RAW: raw}
        if env.faststream:
            fs = await stack.enter_async_context(FsPublisher(env.url, f"{prefix}.events"))
            publishers[FASTSTREAM] = fs
        for p in publishers.values():  # first frames, connection buffers, code paths
            await _one_by_one(p)(payloads[:50])
        await purge(env.url, sink)
        one = await _rounds(env, sink, payloads, {s: _one_by_one(p) for s, p in publishers.items()})
        many = await _rounds(
            env, sink, payloads, {s: _windowed(p, window) for s, p in publishers.items()}
        )
    rows = [
        rate_row(NAME, "publish, awaited one by one", n, one[BUS], one[RAW]),
        rate_row(NAME, f"publish_many, window {window}", n, many[BUS], many[RAW], 1.0),
        Row(NAME, "publish_many, CPU of this process per event", "µs", many["cpu:bus"] / n * 1e6,
            many["cpu:raw"] / n * 1e6, False),
    ]  # fmt: skip
    if env.faststream:
        rows[0].faststream = n / one[FASTSTREAM]
        rows[1].faststream = n / many[FASTSTREAM]
        rows[2].faststream = many[f"cpu:{FASTSTREAM}"] / n * 1e6
    return rows


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
) -> dict[str, float]:
    """Seconds per side to send all *payloads*, in ABBA rounds; and CPU seconds of this
    process meanwhile under `cpu:<side>` (one side runs at a time)."""
    seconds = dict.fromkeys(env.sides, 0.0) | {f"cpu:{side}": 0.0 for side in env.sides}
    start = 0
    rounds = env.counts.rounds
    for size, first_second in zip(
        split(len(payloads), rounds), abba(rounds, env.sides), strict=True
    ):
        items = payloads[start : start + size]
        start += size
        for side in first_second:
            cpu = time.process_time()
            seconds[side] += await timed(send[side](items))
            seconds[f"cpu:{side}"] += time.process_time() - cpu
            await purge(env.url, sink)
    return seconds
