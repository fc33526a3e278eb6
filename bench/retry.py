"""Scenario 5, the retry path: what one failure hand-off costs compared with a plain ack.

N pre-published events are drained four times: by a handler that returns (ack) and by one that
raises (republish to `Q.retry.1h` with confirm + `mandatory`, then ack), each with the bus and
with raw aio-pika. The bus's copy also carries the failure headers (exception, stack trace);
the raw one adds a short error header. The 1 h delay keeps retried copies out of the way.
"""

from __future__ import annotations

import asyncio
import time

from bench.common import (
    Counter,
    Env,
    Order,
    Row,
    deadline_for,
    declared,
    fill,
    max_ratio,
    new_prefix,
    queue_depth,
    rate_row,
    topology,
)
from bench.consumers import bus_consuming, raw_consuming
from bus.stores import MemoryStore
from bus.topology.model import Topology

NAME = "retry"
KEY = "bench.retried"
SUBSCRIBERS = ("raw_ok", "bus_ok", "raw_fail", "bus_fail")


class Boom(Exception):
    pass


async def run(env: Env) -> list[Row]:
    n = env.counts.retry
    topo = topology(
        new_prefix(), {s: [KEY] for s in SUBSCRIBERS}, [KEY],
        queue_type=env.queue_type, prefetch=env.prefetch, delays=("1h",),
    )  # fmt: skip
    seconds: dict[str, float] = {}
    async with declared(env.url, topo):
        await fill(env.url, topo.subscriber("raw_ok").bindings[0].exchange, KEY, n)
        for name in SUBSCRIBERS:
            seconds[name] = await _drain(env, topo, name, n)
        handed_off = {
            s: await queue_depth(env.url, topo.subscriber(s).retry_queue("1h"))
            for s in ("bus_fail", "raw_fail")
        }
    for s, depth in handed_off.items():
        if depth != n:
            raise RuntimeError(f"{s}: {depth} of {n} events reached the retry queue")
    bus_cost = (seconds["bus_fail"] - seconds["bus_ok"]) / n * 1e6
    raw_cost = (seconds["raw_fail"] - seconds["raw_ok"]) / n * 1e6
    text, ok = max_ratio(bus_cost, raw_cost, 1.2)
    return [
        rate_row(NAME, "handler returns: ack", n, seconds["bus_ok"], seconds["raw_ok"]),
        rate_row(NAME, "handler raises: retry-queue hand-off (confirm) + ack", n,
                 seconds["bus_fail"], seconds["raw_fail"]),
        Row(NAME, "extra cost of one failure hand-off", "µs/event", bus_cost, raw_cost, False,
            text, ok),
    ]  # fmt: skip


async def _drain(env: Env, topo: Topology, name: str, n: int) -> float:
    """Seconds from connecting until all *n* are acked (after their hand-off, if any)."""
    counter = Counter(n)
    fails = name.endswith("fail")
    is_bus = name.startswith("bus")

    async def on_event(event: Order) -> None:
        if is_bus:
            counter.hit()
        if fails:
            raise Boom(f"order {event.order_id} failed")

    started = time.perf_counter()
    if is_bus:
        async with bus_consuming(env.url, topo, name, Order, on_event, MemoryStore()) as rt:
            await counter.wait(deadline_for(n))
            while rt.inflight:  # noqa: ASYNC110 - the last hand-offs and acks; no public event
                await asyncio.sleep(0.0005)
            return time.perf_counter() - started
    sub = topo.subscriber(name)
    async with raw_consuming(
        env.url, sub.queue, Order, on_event, prefetch=env.prefetch,
        retry_queue=sub.retry_queue("1h") if fails else None, acked=counter.hit,
    ):  # fmt: skip
        await counter.wait(deadline_for(n))
        return time.perf_counter() - started
