"""Scenario 5, the retry path: what one failure hand-off costs compared with a plain ack.

N pre-published events are drained four times: by a handler that returns (ack) and by one that
raises (republish to `Q.retry.1h` with confirm + `mandatory`, then ack), each with the bus and
with raw aio-pika, in rounds taken in ABBA order, each timed from its first handler call until
its last message was settled. The bus's copy also carries the failure headers (exception,
stack trace); the raw one adds a short error header. The 1 h delay keeps retried copies out of
the way.
"""

from __future__ import annotations

import asyncio
import time

from bench.common import (
    Counter,
    Env,
    Order,
    Row,
    abba,
    deadline_for,
    declared,
    fill,
    max_ratio,
    new_prefix,
    queue_depth,
    rate_row,
    split,
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
    topo = topology(
        new_prefix(), {s: [KEY] for s in SUBSCRIBERS}, [KEY],
        queue_type=env.queue_type, prefetch=env.prefetch, delays=("1h",),
    )  # fmt: skip
    busy = dict.fromkeys(SUBSCRIBERS, 0.0)
    handled = 0
    rounds = env.counts.rounds
    async with declared(env.url, topo):
        exchange = topo.subscriber("raw_ok").bindings[0].exchange
        for chunk, sides in zip(split(env.counts.retry, rounds), abba(rounds), strict=True):
            await fill(env.url, exchange, KEY, chunk)  # every queue gets the same chunk
            for outcome in ("ok", "fail"):
                for side in sides:
                    busy[f"{side}_{outcome}"] += await _drain(env, topo, f"{side}_{outcome}", chunk)
            handled += chunk - 1  # first call to last settled: chunk - 1 intervals
        handed_off = {
            s: await queue_depth(env.url, topo.subscriber(s).retry_queue("1h"))
            for s in ("bus_fail", "raw_fail")
        }
    for s, depth in handed_off.items():
        if depth != env.counts.retry:
            raise RuntimeError(f"{s}: {depth} of {env.counts.retry} events reached the retry queue")
    bus_cost = (busy["bus_fail"] - busy["bus_ok"]) / handled * 1e6
    raw_cost = (busy["raw_fail"] - busy["raw_ok"]) / handled * 1e6
    text, ok = max_ratio(bus_cost, raw_cost, 1.2)
    return [
        rate_row(NAME, "handler returns: ack", handled, busy["bus_ok"], busy["raw_ok"]),
        rate_row(NAME, "handler raises: retry-queue hand-off (confirm) + ack", handled,
                 busy["bus_fail"], busy["raw_fail"]),
        Row(NAME, "extra cost of one failure hand-off", "µs/event", bus_cost, raw_cost, False,
            text, ok),
    ]  # fmt: skip


async def _drain(env: Env, topo: Topology, name: str, n: int) -> float:
    """Seconds from the first handler call until all *n* are acked (after their hand-off)."""
    calls = Counter(n)
    settled = Counter(n)
    fails = name.endswith("fail")

    async def on_event(event: Order) -> None:
        calls.hit()
        if fails:
            raise Boom(f"order {event.order_id} failed")

    if name.startswith("bus"):
        async with bus_consuming(env.url, topo, name, Order, on_event, MemoryStore()) as rt:
            await calls.wait(deadline_for(n))
            while rt.inflight:  # noqa: ASYNC110 - the last hand-offs and acks; no public event
                await asyncio.sleep(0.0005)
            return time.perf_counter() - calls.first
    sub = topo.subscriber(name)
    async with raw_consuming(
        env.url, sub.queue, Order, on_event, prefetch=env.prefetch,
        retry_queue=sub.retry_queue("1h") if fails else None, acked=settled.hit,
    ):  # fmt: skip
        await settled.wait(deadline_for(n))
        return settled.last - calls.first
