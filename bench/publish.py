"""Scenario 1, publish: awaited one-by-one publishing, then windowed bulk publishing.

bus: `Publisher.publish` (checks the type, encodes CloudEvents headers, waits for the confirm)
and `Publisher.publish_many(window=W)`. raw: `exchange.publish(mandatory=True)` on a confirm
channel, awaited one by one, then with at most W confirms outstanding (a semaphore).
"""

from __future__ import annotations

from bench.common import (
    Env,
    RawPublisher,
    Row,
    declared,
    new_prefix,
    order,
    purge,
    rate_row,
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
    exchange = f"{prefix}.events"
    payloads = [order(i) for i in range(n)]
    warm = payloads[: max(10, n // 20)]
    async with (
        declared(env.url, topo),
        Publisher(env.url, topo, source="bench") as pub,
        RawPublisher(env.url, exchange) as raw,
    ):

        async def bus_one_by_one() -> None:
            for p in payloads:
                await pub.publish(KEY, p)

        async def raw_one_by_one() -> None:
            for p in payloads:
                await raw.publish(KEY, p)

        for p in warm:  # first frames, connection buffers, code paths
            await pub.publish(KEY, p)
            await raw.publish(KEY, p)
        await purge(env.url, sink)
        raw_s = await timed(raw_one_by_one())
        await purge(env.url, sink)
        bus_s = await timed(bus_one_by_one())
        await purge(env.url, sink)
        raw_many_s = await timed(raw.publish_window(KEY, payloads, window))
        await purge(env.url, sink)
        bus_many_s = await timed(pub.publish_many([(KEY, p) for p in payloads], window=window))
        await purge(env.url, sink)
    rows = [
        rate_row(NAME, "publish, awaited one by one", n, bus_s, raw_s),
        rate_row(NAME, f"publish_many, window {window}", n, bus_many_s, raw_many_s, 1.0),
    ]
    return rows
