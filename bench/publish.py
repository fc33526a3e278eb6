"""Scenario 1, publish: awaited one-by-one publishing, then windowed bulk publishing.

bus: `Publisher.publish` (checks the type, encodes CloudEvents headers, waits for the confirm)
and `Publisher.publish_many(window=W)`. raw: `exchange.publish(mandatory=True)` on a confirm
channel, awaited one by one, then with at most W confirms outstanding (a semaphore). The events
go out in rounds taken in ABBA order; the sink queue is purged between rounds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import (
    BUS,
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
from bus.publisher import Publisher

NAME = "publish"
KEY = "bench.published"


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
    ):

        async def bus_one_by_one(items: list[Any]) -> None:
            for p in items:
                await pub.publish(KEY, p)

        async def raw_one_by_one(items: list[Any]) -> None:
            for p in items:
                await raw.publish(KEY, p)

        async def bus_many(items: list[Any]) -> None:
            await pub.publish_many([(KEY, p) for p in items], window=window)

        async def raw_many(items: list[Any]) -> None:
            await raw.publish_window(KEY, items, window)

        await bus_one_by_one(payloads[:50])  # first frames, connection buffers, code paths
        await raw_one_by_one(payloads[:50])
        await purge(env.url, sink)
        one = await _rounds(env, sink, payloads, {BUS: bus_one_by_one, RAW: raw_one_by_one})
        many = await _rounds(env, sink, payloads, {BUS: bus_many, RAW: raw_many})
    return [
        rate_row(NAME, "publish, awaited one by one", n, one[BUS], one[RAW]),
        rate_row(NAME, f"publish_many, window {window}", n, many[BUS], many[RAW], 1.0),
    ]


async def _rounds(
    env: Env,
    sink: str,
    payloads: list[Any],
    send: dict[str, Callable[[list[Any]], Awaitable[None]]],
) -> dict[str, float]:
    """Seconds per side to send all *payloads*, in ABBA rounds."""
    seconds = {BUS: 0.0, RAW: 0.0}
    start = 0
    rounds = env.counts.rounds
    for size, first_second in zip(split(len(payloads), rounds), abba(rounds), strict=True):
        items = payloads[start : start + size]
        start += size
        for side in first_second:
            seconds[side] += await timed(send[side](items))
            await purge(env.url, sink)
    return seconds
