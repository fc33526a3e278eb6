"""Ordered handling per key: an ordered subscriber against the same subscriber unordered, and
what one held key costs the other keys.

`python -m bench.ordering [--events 5000] [--rounds 4] [--work-ms 2]
[--partitioner bus|exchange] [--url URL]`, or as the `ordering` scenario of `python -m bench`
(`--smoke` for tiny counts).

Two subscribers of one run get the same events (100 keys, the handler awaits `--work-ms`, as
an I/O-bound handler does): `ordered` (`ordered: true`, 4 partitions) and `unordered`, each
with 2 replicas (two runtimes in this process). With `--partitioner exchange` the broker routes
the ordered side's events straight to their partitions; with the default, `bus`, the bus moves
each from the subscriber's queue. The ordered replicas
first warm up until both are active (the partitions spread over the replicas within
seconds). Each round publishes a chunk to one side and times it until its last event is
handled; sides alternate in ABBA order.

Then the cost of a held key: on the ordered subscriber, rounds that start with 20 events of a
key whose handler fails (the first goes to a 1 h retry, the rest go round hold laps every
second) against rounds that start with 20 events of a key that does not fail; the other keys'
events per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from bench.common import SMOKE, Counts, Env, Row, abba, declared, new_prefix, split, topology_doc
from bus import Context, Publisher, Router
from bus.consume.runtime import Runtime
from bus.stores import MemoryStore
from bus.topology.model import Topology, from_dict

NAME = "ordering"
ORDERED, UNORDERED = "ordered", "unordered"
HELD, FREE = "held", "free"
KEYS, PARTITIONS, REPLICAS, LEAD = 100, 4, 2, 20
TYPE = {ORDERED: "ord.placed", UNORDERED: "un.placed"}


def bench_topology(
    prefix: str, prefetch: int, queue_type: str, partitioner: str = "bus"
) -> Topology:
    doc = topology_doc(
        prefix, {ORDERED: list(TYPE.values())[:1], UNORDERED: list(TYPE.values())[1:]},
        list(TYPE.values()), queue_type=queue_type, prefetch=prefetch, delays=("1h",),
    )  # fmt: skip
    for t in TYPE.values():
        doc["events"][t]["key"] = "k"
    doc["subscribers"][ORDERED].update(ordered=True, partitions=PARTITIONS, partitioner=partitioner)
    return from_dict(doc, source=f"bench:{prefix}")


class Tally:
    """Handled events per side, per replica, and a wake-up when a target is reached."""

    def __init__(self, work: float) -> None:
        self.work = work
        self.handled: dict[str, int] = {}
        self.by_replica: dict[str, int] = {}
        self.target: tuple[str, int, asyncio.Event] | None = None

    def router(self, side: str, replica: str) -> Router:
        router = Router()

        @router.on("#")
        async def handle(event: dict[str, Any], ctx: Context) -> None:
            if self.work:
                await asyncio.sleep(self.work)
            if str(event["k"]).startswith("stuck"):
                raise RuntimeError("this key's events fail: it stays held")
            self.handled[side] = self.handled.get(side, 0) + 1
            self.by_replica[replica] = self.by_replica.get(replica, 0) + 1
            t = self.target
            if t is not None and t[0] == side and self.handled[side] >= t[1]:
                t[2].set()

        return router

    async def until(self, side: str, count: int, timeout: float) -> None:
        done = asyncio.Event()
        self.target = (side, count, done)
        if self.handled.get(side, 0) >= count:
            done.set()
        await asyncio.wait_for(done.wait(), timeout)


@contextlib.asynccontextmanager
async def replicas(url: str, topo: Topology, tally: Tally) -> AsyncIterator[list[Runtime]]:
    runtimes = []
    try:
        for side in (ORDERED, UNORDERED):
            store = MemoryStore()  # shared by a side's replicas, as a database is
            for r in range(REPLICAS):
                rt = Runtime(topo, side, tally.router(side, f"{side}-{r}"), url=url, store=store)
                await rt.start()
                runtimes.append(rt)
        yield runtimes
    finally:
        for rt in runtimes:
            await rt.stop(5)


def events(side: str, first: int, n: int, lead: str | None = None) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [
        (TYPE[side], {"k": lead, "n": -1}) for _ in range(LEAD if lead else 0)
    ]
    out += [(TYPE[side], {"k": f"key-{(first + i) % KEYS}", "n": first + i}) for i in range(n)]
    return out


async def warm_up(pub: Publisher, tally: Tally, seconds: float = 15.0) -> bool:
    """Until both ordered replicas handle events (the partitions spread), or *seconds*."""
    deadline = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < deadline:
        before = dict(tally.by_replica)
        await pub.publish_many(events(ORDERED, sent, 200))
        sent += 200
        await tally.until(ORDERED, tally.handled.get(ORDERED, 0), 30)
        await asyncio.sleep(0.5)
        grew = [r for r in (f"{ORDERED}-{i}" for i in range(REPLICAS))
                if tally.by_replica.get(r, 0) > before.get(r, 0)]  # fmt: skip
        if len(grew) == REPLICAS:
            return True
    return False


async def timed_round(pub: Publisher, tally: Tally, side: str, batch: list[Any]) -> float:
    count = sum(1 for _, d in batch if not str(d["k"]).startswith("stuck"))
    target = tally.handled.get(side, 0) + count
    started = time.perf_counter()
    await pub.publish_many(batch)
    await tally.until(side, target, 120)
    return time.perf_counter() - started


async def measure(
    env: Env, events_per_side: int, work_ms: float, *, held: bool = True, partitioner: str = "bus"
) -> list[Row]:
    topo = bench_topology(new_prefix(), env.prefetch, env.queue_type, partitioner)
    tally = Tally(work_ms / 1000)
    rounds = env.counts.rounds
    seconds = dict.fromkeys((ORDERED, UNORDERED, HELD, FREE), 0.0)
    cpu = dict.fromkeys((ORDERED, UNORDERED), 0.0)
    n = 0
    chunks = split(events_per_side, rounds)
    async with (
        declared(env.url, topo),
        replicas(env.url, topo, tally),
        Publisher(env.url, topo) as pub,
    ):
        spread = await warm_up(pub, tally)
        for chunk, sides in zip(chunks, abba(rounds, (UNORDERED, ORDERED)), strict=True):
            for side in sides:
                before = os.times()
                seconds[side] += await timed_round(pub, tally, side, events(side, n, chunk))
                after = os.times()
                cpu[side] += after.user + after.system - before.user - before.system
            n += chunk
        for r, (chunk, sides) in enumerate(zip(chunks, abba(rounds, (FREE, HELD)), strict=True)):
            if not held:
                break
            for side in sides:
                lead = f"stuck-{r}" if side == HELD else f"free-{r}"
                batch = events(ORDERED, n, chunk, lead)
                seconds[side] += await timed_round(pub, tally, ORDERED, batch)
            n += chunk
    rate = {side: events_per_side / s for side, s in seconds.items() if s}
    ratio = rate[ORDERED] / rate[UNORDERED]
    per_event = {side: cpu[side] / events_per_side * 1e6 for side in (ORDERED, UNORDERED)}
    note = (f"{REPLICAS} replicas in one process, {PARTITIONS} partitions, {KEYS} keys, handler "
            f"{work_ms:g} ms, partitioner: {partitioner}; bus = ordered, raw = the same "
            f"subscriber unordered; CPU of this process (publisher and replicas) per event: "
            f"ordered {per_event[ORDERED]:.0f} µs, unordered {per_event[UNORDERED]:.0f} µs"
            + ("" if spread else "; the partitions did not spread in time"))  # fmt: skip
    by = "" if partitioner == "bus" else f", partitioner: {partitioner}"
    rows = [
        Row(NAME, f"ordered vs unordered, 2 replicas, handler {work_ms:g} ms{by}", "events/s",
            rate[ORDERED], rate[UNORDERED], True, "ordered/unordered >= 0.70", ratio >= 0.7,
            note=note),
    ]  # fmt: skip
    if held:
        note = "bus = rounds with a held key (its events lap), raw = rounds without"
        rows.append(Row(NAME, "other keys while one key is held", "events/s", rate[HELD],
                        rate[FREE], True, note=note))  # fmt: skip
    return rows


async def run(env: Env) -> list[Row]:
    """A handler of 2 ms (the bus's own cost per event shows) and one of 20 ms, with the bus's
    own partitioner; and 2 ms with the broker's exchange as partitioner."""
    rows = await measure(env, env.counts.ordering, 2.0)
    if env.counts.ordering > SMOKE.ordering:  # --smoke: the code path once is enough
        rows += await measure(env, env.counts.ordering, 20.0, held=False)
    return rows + await measure(env, env.counts.ordering, 2.0, held=False, partitioner="exchange")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ordering", description=__doc__)
    p.add_argument("--url", default="amqp://guest:guest@localhost:5672/")
    p.add_argument("--events", type=int, default=Counts().ordering, help="per side")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--work-ms", type=float, default=2.0, help="what the handler awaits")
    p.add_argument(
        "--partitioner",
        choices=("bus", "exchange"),
        default="bus",
        help="exchange: the broker routes events straight to their partitions",
    )
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()
    counts = SMOKE if a.smoke else Counts(rounds=a.rounds)
    env = Env(a.url, counts)
    events = counts.ordering if a.smoke else a.events
    rows = asyncio.run(measure(env, events, a.work_ms, partitioner=a.partitioner))
    for row in rows:
        print(f"{row.metric}: {row.bus:,.0f} vs {row.raw:,.0f} {row.unit} = {row.ratio:.2f}x")
        print(f"  ({row.note})")


if __name__ == "__main__":
    main()
