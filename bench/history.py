"""Event history: publish_many with history on and off, replay and read rates, their memory,
and a backfill into a new subscriber.

`python -m bench.history [--events 20000] [--log 100000] [--rounds 4] [--url URL]`, or as the
`history` scenario of `python -m bench` (`--publish`, `--history`, `--rounds`).

- publish_many: the same events to two exchanges of one run, one keeping a history (a stream
  bound with `#`), in ABBA rounds: on/off (target >= 0.85).
- the log of the "on" exchange is filled to `--log` events (untimed, but its rate is the
  reference of the backfill row), then read by `bus history --json` in a process of its own
  (output read and discarded), beside a plain aiormq stream consumer that only counts (the
  floor); its peak RSS reading the first 10,000 events, then the whole log,
- copied into a subscriber's quorum queue with `replay` (the engine of `bus replay`), beside
  publish_many of as many events into the same kind of queue,
- and copied again by `backfill` into a subscriber whose queue was just created: seconds until
  its queue holds them all.
Memory of a replay: this process's resident set (VmRSS) after its first 10,000 events and after
the last; flat means the second is no bigger than the first plus a little.
CPU µs per event (process time) is given in the notes: on a shared machine it moves less than
wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bench.common import Counts, Env, Row, abba, declared, new_prefix
from bus import Publisher
from bus.amqp.connection import connect_plain
from bus.history import Selection
from bus.history.backfill import backfill
from bus.history.replay import replay
from bus.topology.model import Topology, from_dict
from bus.topology.plan import BindingDecl, QueueDecl, desired

NAME = "history"
OFF, ON = "off", "on"
MARK = 10_000  # the first memory mark (or the log's size when smaller)
CHUNK = 5_000


def bench_topology(prefix: str, *, late: bool = True) -> Topology:
    """Two exchanges, "on" keeping a history; a sink queue bound to each with `#`; and, with
    *late*, the subscribers `late` (replayed into) and `fresh` (`backfill: 1h`) on "on"."""
    return from_dict(bench_doc(prefix, late=late), source=f"bench:{prefix}")


def bench_doc(prefix: str, *, late: bool = True) -> dict[str, Any]:
    exchanges: dict[str, dict[str, Any]] = {f"{prefix}.{s}": {"type": "topic"} for s in (OFF, ON)}
    exchanges[f"{prefix}.{ON}"]["history"] = {"max_age": "1h"}

    def sub(name: str, side: str, **kw: Any) -> dict[str, Any]:
        return {"handlers": "bench.common:EMPTY", "queue": f"{prefix}.{name}",
                "bindings": [{"exchange": f"{prefix}.{side}", "keys": ["#"]}], **kw}  # fmt: skip

    subs = {"sink": sub("sink", OFF), "sink_on": sub("sink_on", ON)}
    if late:
        subs |= {"late": sub("late", ON), "fresh": sub("fresh", ON, backfill="1h")}
    return {
        "version": 1,
        "defaults": {"queue_type": "quorum", "retry": {"delays": ["1h"]}},
        "exchanges": exchanges,
        "events": {f"{side}.placed": {"exchange": f"{prefix}.{side}"} for side in (OFF, ON)},
        "subscribers": subs,
    }


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Clock:
    """Wall and process time of one timed stretch, and the RSS at two marks."""

    def __init__(self, mark: int) -> None:
        self.mark = mark
        self.rss_mark = self.rss_end = float("nan")
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        self.rss_end = rss_mib()

    def seen(self, n: int) -> None:
        if n >= self.mark and self.rss_mark != self.rss_mark:  # NaN: not yet marked
            self.rss_mark = rss_mib()


async def _publish_many(pub: Publisher, side: str, n: int) -> float:
    started = time.perf_counter()
    for i in range(0, n, CHUNK):
        await pub.publish_many(
            [(f"{side}.placed", {"order_id": f"o-{j}"}) for j in range(i, min(n, i + CHUNK))]
        )
    return time.perf_counter() - started


async def _floor(url: str, stream: str, n: int) -> float:
    """Seconds for a plain aiormq stream consumer to take *n* messages, counting only."""
    conn = await connect_plain(url)
    try:
        raw = await (await conn.channel()).get_underlay_channel()
        await raw.basic_qos(prefetch_count=2000)
        done, seen = asyncio.Event(), 0

        async def count(m: Any) -> None:
            nonlocal seen
            seen += 1
            if seen % 1000 == 0:
                await raw.basic_ack(m.delivery_tag, multiple=True)
            if seen >= n:
                done.set()

        started = time.perf_counter()
        await raw.basic_consume(stream, count, arguments={"x-stream-offset": "first"})
        await done.wait()
        return time.perf_counter() - started
    finally:
        await conn.close()


async def _depth(url: str, queue: str) -> int:
    conn = await connect_plain(url)
    try:
        q = await (await conn.channel()).declare_queue(queue, passive=True)
        return int(q.declaration_result.message_count or 0)
    finally:
        await conn.close()


def _us(clock: Clock, n: int) -> str:
    return f"{clock.cpu / n * 1e6:.0f} µs CPU per event"


def _memory(what: str, clock: Clock, n: int) -> Row:
    row = Row(NAME, f"{what}: RSS after {n:,} events (tuned raw: after {clock.mark:,})", "MiB",
              clock.rss_end, clock.rss_mark, False,
              note="the process's VmRSS; flat: the two marks about equal")  # fmt: skip
    row.target = "bus/raw <= 1.1"
    row.passed = clock.rss_end <= clock.rss_mark * 1.1
    return row


@contextlib.asynccontextmanager
async def _late_queues(url: str, prefix: str) -> AsyncIterator[None]:
    """Declare the queues and bindings of `late` and `fresh` now (as `bus topology apply` would
    when they are added); delete them after."""
    base = set(desired(bench_topology(prefix, late=False)))
    extra = [d for d in desired(bench_topology(prefix)) if d not in base]
    conn = await connect_plain(url)
    try:
        raw = await (await conn.channel()).get_underlay_channel()
        for d in extra:
            if isinstance(d, QueueDecl):
                await raw.queue_declare(d.name, durable=True, arguments=dict(d.arguments))
        for d in extra:
            if isinstance(d, BindingDecl):
                await raw.queue_bind(
                    d.queue, d.exchange, routing_key=d.routing_key, arguments=dict(d.arguments)
                )
        yield
    finally:
        raw = await (await conn.channel()).get_underlay_channel()
        for d in extra:
            if isinstance(d, QueueDecl):
                with contextlib.suppress(Exception):
                    await raw.queue_delete(d.name)
        await conn.close()


async def _purge(url: str, queue: str) -> None:
    conn = await connect_plain(url)
    try:
        await (await (await conn.channel()).get_underlay_channel()).queue_purge(queue)
    finally:
        await conn.close()


async def measure(url: str, counts: Counts, say: Callable[[str], None] = print) -> list[Row]:
    prefix = new_prefix()
    base = bench_topology(prefix, late=False)
    topo = bench_topology(prefix)
    log, events, rounds = counts.history, counts.publish, counts.rounds
    rows: list[Row] = []
    async with declared(url, base), Publisher(url, base) as pub:
        # publish_many, history on vs off, ABBA rounds: one quorum queue behind each exchange
        rates: dict[str, list[float]] = {OFF: [], ON: []}
        per_round = max(1, events // rounds)
        for pair in abba(rounds, (OFF, ON)):
            for side in pair:
                rates[side].append(per_round / await _publish_many(pub, side, per_round))
        off, on = (sum(rates[s]) / len(rates[s]) for s in (OFF, ON))
        row = Row(NAME, "publish_many, history on (tuned raw: off), ABBA rounds", "events/s",
                  on, off, True, rounds={ON: rates[ON], OFF: rates[OFF]})  # fmt: skip
        row.judge("raw", 0.85, at_least=True)
        rows.append(row)
        say(f"publish_many on/off {on / off:.2f}x")
        fill_s = await _publish_many(pub, ON, log)
        await _purge(url, f"{prefix}.sink_on")
        logged = len(rates[ON]) * per_round + log
        say(f"log holds {logged:,} events (filled at {log / fill_s:,.0f}/s)")
        rows += await _read(url, prefix, logged)
        async with _late_queues(url, prefix):
            rows += await _replay(url, topo, logged, off)
            rows += await _backfill(url, topo, logged, logged * fill_s / log)
    for r in rows:
        say(f"{r.metric}: {r.bus:,.1f} {r.unit} (ref {r.raw:,.1f}) {r.note}")
    return rows


def _cli_read(url: str, prefix: str, limit: int | None) -> tuple[int, float, float]:
    """`bus history --json` in a process of its own, output discarded: (events, seconds, its
    peak RSS in MiB)."""
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        path = Path(tmp) / "topology.yaml"
        path.write_text(json.dumps(bench_doc(prefix, late=False)))
        cmd = [sys.executable, "-m", "bus.cli", "history", f"{prefix}.{ON}", "--json",
               "--url", url, "--topology", str(path)]  # fmt: skip
        if limit is not None:
            cmd += ["--limit", str(limit)]
        started = time.perf_counter()
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            n = sum(1 for _ in proc.stdout)
            err = proc.stderr.read() if proc.stderr else b""
        took = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"bus history failed: {err.decode(errors='replace')[-500:]}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return n, took, peak


async def _read(url: str, prefix: str, logged: int) -> list[Row]:
    mark = min(MARK, logged)
    _, _, rss_mark = await asyncio.to_thread(_cli_read, url, prefix, mark)
    n, took, rss_end = await asyncio.to_thread(_cli_read, url, prefix, None)
    floor_s = await _floor(url, f"{prefix}.{ON}.history", logged)
    row = Row(NAME, "bus history --json, whole log, its own process (tuned raw: a plain "
              "aiormq stream consumer, counting)", "events/s", n / took, logged / floor_s, True,
              note="the command's wall time, start-up included")  # fmt: skip
    memory = Row(NAME, f"bus history --json: peak RSS over {n:,} events (tuned raw: over "
                 f"{mark:,})", "MiB", rss_end, rss_mark, False)  # fmt: skip
    memory.judge("raw", 1.1, at_least=False)
    return [row, memory]


async def _replay(url: str, topo: Topology, logged: int, publish_rate: float) -> list[Row]:
    clock = Clock(min(MARK, logged))
    conn = await connect_plain(url, frames=True)  # as `bus replay` opens it
    try:
        with clock:
            out = await replay(conn, topo, topo.subscriber("late"), Selection(),
                               progress=lambda n, _: clock.seen(n))  # fmt: skip
    finally:
        await conn.close()
    rate = out.total / clock.wall
    row = Row(NAME, "replay into a subscriber's quorum queue, confirmed (tuned raw: "
              "publish_many into one)", "events/s", rate, publish_rate, True,
              note=_us(clock, out.total))  # fmt: skip
    row.target, row.passed = ">= 10,000/s", rate >= 10_000
    await _purge(url, topo.subscriber("late").queue)
    return [row, _memory("replay", clock, out.total)]


async def _backfill(url: str, topo: Topology, logged: int, publish_s: float) -> list[Row]:
    fresh = topo.subscriber("fresh")
    conn = await connect_plain(url)
    try:
        started = time.perf_counter()
        out = await backfill(conn, topo, fresh)
        for _ in range(100_000):  # the copies are confirmed: the queue holds them already
            if await _depth(url, fresh.queue) >= out.total:
                break
            await asyncio.sleep(0.05)
        took = time.perf_counter() - started
    finally:
        await conn.close()
    await _purge(url, fresh.queue)
    return [Row(NAME, f"backfill of {out.total:,} events into a new subscriber, until its queue "
                "holds them all (tuned raw: publish_many of as many)", "s", took, publish_s,
                False)]  # fmt: skip


async def run(env: Env) -> list[Row]:
    """The `history` scenario of `python -m bench`."""
    return await measure(env.url, env.counts, say=lambda _: None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.history")
    parser.add_argument("--events", type=int, default=20_000, help="publish_many, both sides")
    parser.add_argument(
        "--log",
        type=int,
        default=100_000,
        help="events in the log read, "
        "replayed and backfilled (1,000,000 takes long on a shared machine)",
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--url", default=os.environ.get("BUS_URL", "amqp://guest:guest@localhost:5672/")
    )
    a = parser.parse_args()
    asyncio.run(measure(a.url, Counts(publish=a.events, rounds=a.rounds, history=a.log)))
