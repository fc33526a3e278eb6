"""Scenario saga: a saga step against a plain handler doing the same work, per store.

The work of one event: count it for its key and publish one follow-up event. The plain handler
(the "raw" column) keeps the count in memory and publishes with `ctx.publish`, with the store's
idempotency claim around it; the saga step (the "bus" column) loads the instance, runs, and
commits its new state, step record, processed mark and outbox row in one transaction, which
the subscriber's own relay then publishes. `counts.saga_instances` instances live in the store
(created beforehand, untimed) and the events are spread over their keys.

Each side drains a pre-filled queue; the time is from the handler's first call to the last
follow-up reaching the sink queue (so the relay's tail counts), in ABBA rounds, with a SQLite
and a PostgreSQL store:
- cost per event, one at a time (prefetch 1): microseconds per event, target saga/plain <= 2;
- steps per second with the live instances, at the run's prefetch (steps run concurrently;
  steps of one instance are serialised by the version check, a conflict reruns the step):
  target saga/plain >= 0.5, twice the cost per event at most.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aio_pika
from pydantic import BaseModel

from bench.common import (
    BUS,
    RAW,
    Counter,
    Env,
    Row,
    abba,
    deadline_for,
    declared,
    new_prefix,
    split,
    topology_doc,
)
from bench.outbox import _postgres, _sqlite
from bus import Context, Router, Saga, SagaContext
from bus.consume.runtime import Runtime
from bus.produce.publisher import Publisher
from bus.stores import open_store
from bus.topology.model import Topology, from_dict

NAME = "saga"
OPEN, STEP, PLAIN, NOTED = "bench.open", "bench.step", "bench.plain", "bench.noted"


class Tally(BaseModel):
    count: int = 0


class Step(BaseModel):
    key: str
    n: int = 0


@dataclass
class Sink:
    """Counts the follow-ups arriving on the sink queue for the side running now, and when
    that side's handler was first called."""

    counter: Counter = field(default_factory=lambda: Counter(1))
    first_call: float = 0.0

    def hit(self) -> None:
        self.counter.hit()

    def called(self) -> None:
        if not self.first_call:
            self.first_call = time.perf_counter()

    def reset(self, n: int) -> None:
        self.counter, self.first_call = Counter(n), 0.0

    @property
    def seconds(self) -> float:
        """From the first handler call to the last follow-up at the sink: the relay's tail
        (the saga side's publishes leave after the commit) counts."""
        return self.counter.last - self.first_call


def routers(sink: Sink) -> tuple[Router, Router]:
    """The saga subscriber's router and the plain subscriber's, doing the same work."""
    tally = Saga("tally", state=Tally, key="key")
    saga_router = Router()
    saga_router.include_saga(tally)

    @tally.start(OPEN)
    async def opened(event: Step, state: Tally, ctx: SagaContext) -> None:
        sink.called()
        await ctx.publish(NOTED, {"key": ctx.key, "n": event.n})

    @tally.on(STEP)
    async def stepped(event: Step, state: Tally, ctx: SagaContext) -> None:
        sink.called()
        state.count += 1
        await ctx.publish(NOTED, {"key": ctx.key, "n": event.n})

    counts: dict[str, int] = {}
    plain_router = Router()

    @plain_router.on(PLAIN)
    async def plain(event: Step, ctx: Context) -> None:
        sink.called()
        counts[event.key] = counts.get(event.key, 0) + 1
        await ctx.publish(NOTED, {"key": event.key, "n": event.n})

    return saga_router, plain_router


def bench_topology(env: Env, prefetch: int) -> Topology:
    doc = topology_doc(
        new_prefix(), {"saga": [OPEN, STEP], "plain": [PLAIN], "sink": [NOTED]},
        [OPEN, STEP, PLAIN, NOTED], queue_type=env.queue_type, prefetch=env.prefetch,
    )  # fmt: skip
    for name in ("saga", "plain"):
        doc["subscribers"][name]["prefetch"] = prefetch
    return from_dict(doc, source="bench:saga")


async def run(env: Env) -> list[Row]:
    rows: list[Row] = []
    # fresh databases as the outbox scenario makes them (its `bus_outbox` is the saga's too)
    for label, database in (("SQLite", _sqlite), ("PostgreSQL", _postgres)):
        async with database() as store_url:
            live = False
            for prefetch in (1, env.prefetch):
                topo = bench_topology(env, prefetch)
                async with declared(env.url, topo), sink_of(env.url, topo) as sink:
                    if not live:
                        await _open_instances(env, topo, store_url, sink)
                        live = True
                    seconds, events, per_round = await _rounds(env, topo, store_url, sink)
                row = _row(env, label, prefetch, seconds, events)
                row.rounds = per_round
                rows.append(row)
    return rows


def _row(env: Env, label: str, prefetch: int, seconds: dict[str, float], events: int) -> Row:
    k = env.counts.saga_instances
    if prefetch == 1:
        bus, raw = seconds[BUS] / events * 1e6, seconds[RAW] / events * 1e6
        row = Row(NAME, f"cost per event, one at a time ({label} store)", "µs/event",
                  bus, raw, False)  # fmt: skip
        row.judge(RAW, 2.0, at_least=False)
    else:
        bus, raw = events / seconds[BUS], events / seconds[RAW]
        row = Row(NAME, f"steps/s, {k:,} live instances, prefetch {prefetch} ({label} store)",
                  "events/s", bus, raw, True)  # fmt: skip
        row.judge(RAW, 0.5, at_least=True)  # half the rate: twice the cost per event
    row.note = ("bus column: a saga step (state, step record, processed mark, outbox row in one "
                "transaction; relayed); raw column: a plain handler counting in memory and "
                "publishing, with the store's idempotency claim")  # fmt: skip
    return row


async def _open_instances(env: Env, topo: Topology, store_url: str, sink: Sink) -> None:
    """Start the live instances (untimed): one start event per key."""
    k = env.counts.saga_instances
    await _fill(env, topo, OPEN, [(f"k-{i}", i) for i in range(k)])
    await _drain(env, topo, "saga", store_url, sink, k)


async def _rounds(
    env: Env, topo: Topology, store_url: str, sink: Sink
) -> tuple[dict[str, float], int, dict[str, list[float]]]:
    """Seconds of each side over all rounds, the events they handled, and each round's
    events per second (the spread)."""
    k, rounds = env.counts.saga_instances, env.counts.rounds
    seconds = {BUS: 0.0, RAW: 0.0}
    per_round: dict[str, list[float]] = {BUS: [], RAW: []}
    events, start = 0, 0
    for size, order_ in zip(split(env.counts.saga, rounds), abba(rounds), strict=True):
        items = [(f"k-{(start + i) % k}", start + i) for i in range(size)]
        start += size
        for side in order_:
            subscriber, event_type = ("saga", STEP) if side == BUS else ("plain", PLAIN)
            await _fill(env, topo, event_type, items)
            took = await _drain(env, topo, subscriber, store_url, sink, size)
            seconds[side] += took
            per_round[side].append(size / took if took else 0.0)
        events += size
    return seconds, events, per_round


async def _fill(env: Env, topo: Topology, event_type: str, items: list[tuple[str, int]]) -> None:
    async with Publisher(env.url, topo, source="bench") as pub:
        await pub.publish_many([(event_type, {"key": key, "n": n}) for key, n in items])


async def _drain(
    env: Env, topo: Topology, subscriber: str, store_url: str, sink: Sink, n: int
) -> float:
    """Run *subscriber* until *n* follow-ups reached the sink; the seconds it took (Sink)."""
    sink.reset(n)
    saga_router, plain_router = routers(sink)
    router = saga_router if subscriber == "saga" else plain_router
    store = await open_store(store_url)
    rt = Runtime(topo, subscriber, router, url=env.url, store=store)
    try:
        await rt.start()
        await sink.counter.wait(deadline_for(n) * 3)
    finally:
        await rt.stop(5)
        await store.close()
    return sink.seconds


@contextlib.asynccontextmanager
async def sink_of(url: str, topo: Topology) -> AsyncIterator[Sink]:
    """A plain aio-pika consumer of the sink queue (auto-ack), counting arrivals."""
    sink = Sink()
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.get_queue(topo.subscriber("sink").queue)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            sink.hit()

        await queue.consume(on_message, no_ack=True)
        yield sink
    finally:
        await conn.close()
