"""Ordered subscribers on the real broker: one event per key at a time, in publish order, across
replicas and retries, while other keys keep going."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bus import Context, Router
from bus.errors import InvalidEvent
from bus.produce.publisher import Publisher
from bus.stores import MemoryStore
from tests.conftest import wait_for
from tests.integration.helpers import (
    applied,
    delete_topology,
    from_dict,
    queue_depth,
    running,
    topology_doc,
)
from tests.integration.proxy import Proxy

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)


def ordered_topology(
    prefix: str, *, delays: list[str], partitions: int = 4, partitioner: str = "bus"
) -> Any:
    exchange = f"{prefix}.events"
    sub = {"keys": ["order.*"], "ordered": True, "partitions": partitions}
    if partitioner != "bus":
        sub["partitioner"] = partitioner
    doc = topology_doc(
        prefix,
        {"fulfillment": sub},
        delays=delays,
        events={
            "order.placed": {"exchange": exchange, "key": "order_id"},
            "order.cancelled": {"exchange": exchange, "key": "order_id"},
        },
    )
    return from_dict(doc, source=f"test:{prefix}")


@dataclass
class Run:
    key: str
    seq: int
    attempt: int
    replica: str
    start: float
    end: float = 0.0
    ok: bool = False


class Recorder:
    """Every handler run of every replica, with start and end times."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.running: dict[str, int] = defaultdict(int)
        self.overlaps: list[str] = []

    def router(self, replica: str, fails: Any) -> Router:
        router = Router()

        @router.on("order.*")
        async def handle(event: dict[str, Any], ctx: Context) -> None:
            key = event["order_id"]
            run = Run(key, event["seq"], ctx.attempt, replica, time.monotonic())
            self.runs.append(run)
            self.running[key] += 1
            if self.running[key] > 1:
                self.overlaps.append(f"{key} #{event['seq']} ran beside another of its key")
            try:
                await asyncio.sleep(random.uniform(0.0005, 0.004))
                if fails(event, ctx):
                    raise ConnectionError(f"{key} #{event['seq']} fails on attempt {ctx.attempt}")
                run.ok = True
            finally:
                self.running[key] -= 1
                run.end = time.monotonic()

        return router

    def handled(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = defaultdict(list)
        for r in self.runs:
            if r.ok:
                out[r.key].append(r.seq)
        return out

    def ok_count(self) -> int:
        return sum(r.ok for r in self.runs)


@pytest.fixture(params=["bus", "exchange"])
def partitioner(request: pytest.FixtureRequest) -> str:
    """How the events reach the partitions: moved by the bus, or routed by the broker."""
    return str(request.param)


async def test_two_replicas_handle_each_key_in_publish_order_through_retries(
    amqp_url: str, partitioner: str, prefix: str
) -> None:
    kind = partitioner
    keys, per_key = 30, 8
    topology = ordered_topology(prefix, delays=["200ms", "400ms"], partitioner=kind)
    rec = Recorder()

    def every_seventh_fails_once(event: dict[str, Any], ctx: Context) -> bool:
        return bool(event["n"] % 7 == 0 and ctx.attempt == 1)

    store = MemoryStore()  # shared by the replicas, as a database is
    events = [
        ("order.placed" if s == 0 else "order.cancelled",
         {"order_id": f"o-{k}", "seq": s, "n": s * keys + k})
        for s in range(per_key) for k in range(keys)
    ]  # fmt: skip
    async with (
        applied(amqp_url, topology),
        running(
            amqp_url, topology, "fulfillment", rec.router("a", every_seventh_fails_once), store
        ),
        running(
            amqp_url, topology, "fulfillment", rec.router("b", every_seventh_fails_once), store
        ),
        Publisher(amqp_url, topology) as pub,
    ):
        await pub.publish_many(events)
        await wait_for(lambda: rec.ok_count() >= keys * per_key, timeout=60,
                       message=f"{keys * per_key} events handled")  # fmt: skip
        await asyncio.sleep(0.5)  # a duplicate would show up now
    failures = sum(1 for _, d in events if d["n"] % 7 == 0)
    assert rec.overlaps == []
    assert rec.ok_count() == keys * per_key, "each event handled once"
    assert len(rec.runs) == keys * per_key + failures, "each 7th failed once, then ran once more"
    order = rec.handled()
    wrong = {k: v for k, v in order.items() if v != list(range(per_key))}
    assert not wrong, f"keys out of publish order: {wrong}"
    for key in order:  # never two of one key at once, by the recorded times
        spans = sorted((r.start, r.end) for r in rec.runs if r.key == key)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), key
    print(f"replicas: {sorted({r.replica for r in rec.runs})}, failures retried: {failures}")


def assert_each_once_in_order_never_overlapping(rec: Recorder, keys: int, per_key: int) -> None:
    assert rec.overlaps == []
    oks = [(r.key, r.seq) for r in rec.runs if r.ok]
    assert len(oks) == len(set(oks)) == keys * per_key, "each event handled once"
    order = rec.handled()
    wrong = {k: v for k, v in order.items() if v != list(range(per_key))}
    assert not wrong, f"keys out of publish order: {wrong}"
    for key in order:  # never two of one key at once, by the recorded times
        spans = sorted((r.start, r.end) for r in rec.runs if r.key == key)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), key


@pytest.mark.timeout(300)
async def test_order_holds_while_the_broker_connections_are_cut(
    amqp_url: str, partitioner: str, prefix: str
) -> None:
    kind = partitioner
    keys, per_key = 30, 8
    topology = ordered_topology(prefix, delays=["200ms", "400ms"], partitioner=kind)
    rec = Recorder()

    def every_seventh_fails_once(event: dict[str, Any], ctx: Context) -> bool:
        return bool(event["n"] % 7 == 0 and ctx.attempt == 1)

    store = MemoryStore()  # shared by the replicas, as a database is
    events = [
        ("order.placed" if s == 0 else "order.cancelled",
         {"order_id": f"o-{k}", "seq": s, "n": s * keys + k})
        for s in range(per_key) for k in range(keys)
    ]  # fmt: skip
    proxy = await Proxy.to(amqp_url).start()
    url = proxy.url(amqp_url)  # both replicas' connections go through it
    severed: list[int] = []
    try:
        async with (
            applied(amqp_url, topology),
            running(url, topology, "fulfillment", rec.router("a", every_seventh_fails_once), store),
            running(url, topology, "fulfillment", rec.router("b", every_seventh_fails_once), store),
            Publisher(amqp_url, topology) as pub,
        ):
            try:
                for part in range(4):  # a cut after each quarter is published and partly handled
                    await pub.publish_many(events[part * 60 : (part + 1) * 60])
                    await wait_for(lambda p=part: rec.ok_count() >= p * 60 + 20, timeout=40,  # type: ignore[misc]
                                   message="some of the quarter handled")  # fmt: skip
                    await wait_for(lambda: proxy.connections >= 4, timeout=30,
                                   message="reconnected")  # fmt: skip
                    severed.append(proxy.cut())
                await wait_for(lambda: rec.ok_count() >= keys * per_key, timeout=90,
                               message=f"{keys * per_key} events handled")  # fmt: skip
            except BaseException:
                q = f"{prefix}.fulfillment"
                names = [q, *(f"{q}.p{i}" for i in range(4)), *(f"{q}.p{i}.hold" for i in range(4)),
                         f"{q}.retry.200ms", f"{q}.retry.400ms", f"{q}.dlq"]  # fmt: skip
                depths = {n: await queue_depth(amqp_url, n) for n in names}
                print(f"at the timeout: {rec.ok_count()} handled, cuts {severed}, "
                      f"connections {proxy.connections}, queues {depths}")  # fmt: skip
                raise
            await asyncio.sleep(1.0)  # a duplicate would show up now
    finally:
        await proxy.close()
    print(
        f"cuts: {severed}, runs: {len(rec.runs)}, replicas: {sorted({r.replica for r in rec.runs})}"
    )
    assert all(severed), f"every cut must sever live connections: {severed}"
    assert_each_once_in_order_never_overlapping(rec, keys, per_key)


async def test_a_held_key_does_not_stop_the_other_keys(
    amqp_url: str, partitioner: str, prefix: str
) -> None:
    kind = partitioner
    topology = ordered_topology(prefix, delays=["500ms", "1s", "2s"], partitions=1,
                                partitioner=kind)  # fmt: skip
    rec = Recorder()
    started = time.monotonic()
    hold_for = 2.5

    def stuck_fails_for_a_while(event: dict[str, Any], ctx: Context) -> bool:
        return bool(event["order_id"] == "stuck" and time.monotonic() - started < hold_for)

    sent: dict[tuple[str, int], float] = {}
    async with (
        applied(amqp_url, topology),
        running(amqp_url, topology, "fulfillment", rec.router("a", stuck_fails_for_a_while)),
        Publisher(amqp_url, topology) as pub,
    ):
        for seq in range(3):  # all in the one partition, with the others
            await pub.publish("order.placed", {"order_id": "stuck", "seq": seq, "n": 0})
        for seq in range(60):
            key = f"o-{seq % 6}"
            sent[(key, seq)] = time.monotonic()
            await pub.publish("order.placed", {"order_id": key, "seq": seq, "n": 0})
            await asyncio.sleep(0.05)
        await wait_for(lambda: rec.handled().get("stuck") == [0, 1, 2], timeout=20,
                       message="the held key's events, once it recovered")  # fmt: skip
        assert await queue_depth(amqp_url, f"{prefix}.fulfillment.p0.hold") == 0
    latency = [r.end - sent[(r.key, r.seq)] for r in rec.runs if r.key != "stuck" and r.ok]
    assert len(latency) == 60
    print(f"other keys while one was held: worst latency {max(latency) * 1000:.0f} ms")
    assert max(latency) < 1.0, "other keys waited for the held one"
    stuck = [r for r in rec.runs if r.key == "stuck"]
    assert [r.seq for r in stuck if r.ok] == [0, 1, 2]
    assert min(r.start for r in stuck if r.seq == 1) > max(r.end for r in stuck if r.seq == 0)
    assert rec.overlaps == []


async def test_a_keyed_event_without_its_key_is_refused_before_anything_is_sent(
    amqp_url: str, prefix: str
) -> None:
    topology = ordered_topology(prefix, delays=["200ms"])
    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        with pytest.raises(InvalidEvent, match="ordered by `order_id`"):
            await pub.publish("order.placed", {"seq": 1})
        with pytest.raises(InvalidEvent):
            await pub.publish_many([("order.placed", {"order_id": "o-1"}), ("order.placed", {})])
        assert await queue_depth(amqp_url, f"{prefix}.fulfillment") == 0


async def test_changing_partitions_is_refused_while_events_are_queued_then_applied_once_drained(
    amqp_url: str, prefix: str
) -> None:
    from bus.cli.topology import _plan
    from bus.errors import BusError
    from bus.topology.diff import Action

    two = ordered_topology(prefix, delays=["200ms"], partitions=2)
    four = ordered_topology(prefix, delays=["200ms"], partitions=4)
    rec = Recorder()
    async with applied(amqp_url, two), Publisher(amqp_url, two) as pub:
        await pub.publish("order.placed", {"order_id": "o-1", "seq": 0, "n": 1})
        with pytest.raises(BusError, match=r"partitions of fulfillment change 2 -> 4 .*"
                           rf"{prefix}\.fulfillment \(1\)"):  # fmt: skip
            await _plan(amqp_url, four, prune=False, execute=True)
        assert await queue_depth(amqp_url, f"{prefix}.fulfillment.p3") == 0  # nothing made
        async with running(amqp_url, two, "fulfillment", rec.router("a", lambda e, c: False)):
            await wait_for(lambda: rec.ok_count() == 1, message="drained")
        steps, _refused = await _plan(amqp_url, four, prune=False, execute=True)
        made = [s.decl.key for s in steps if s.action is Action.CREATE]
        assert f"queue {prefix}.fulfillment.p3" in made
        async with running(amqp_url, four, "fulfillment", rec.router("a", lambda e, c: False)):
            await pub.publish("order.placed", {"order_id": "o-2", "seq": 0, "n": 1})
            await wait_for(lambda: rec.ok_count() == 2, message="handled on four partitions")
    await delete_topology(amqp_url, four)  # p2 and p3 too


async def test_status_and_metrics_show_the_active_consumer_and_the_held_keys(
    amqp_url: str, prefix: str
) -> None:
    from bus.amqp.connection import connect_plain
    from bus.ops.status import collect

    topology = ordered_topology(prefix, delays=["2s"], partitions=1)
    rec = Recorder()
    async with (
        applied(amqp_url, topology),
        running(amqp_url, topology, "fulfillment",
                rec.router("a", lambda e, c: e["seq"] == 0 and c.attempt == 1)) as rt,
        Publisher(amqp_url, topology) as pub,
    ):  # fmt: skip
        for seq in range(3):
            await pub.publish("order.placed", {"order_id": "stuck", "seq": seq, "n": 0})
        assert rt.intake is not None and rt.reporter is not None
        await wait_for(lambda: rt.intake.held_keys() == 1, message="the key held")  # type: ignore[union-attr]
        await rt.reporter.report()
        conn = await connect_plain(amqp_url)
        try:
            [state] = await collect(conn, topology)
        finally:
            await conn.close()
        [p0] = state.partitions
        assert p0.queue.name == f"{prefix}.fulfillment.p0" and p0.queue.consumers == 1
        assert p0.owner == rt.reporter.owner
        [held] = p0.held
        assert held.key == "stuck" and held.aside == 2
        labels = {"subscriber": "fulfillment"}
        sample = rt.metrics.registry.get_sample_value
        assert sample("bus_ordering_held_keys", labels) == 1
        assert 0 < (sample("bus_ordering_oldest_hold_seconds", labels) or 0) < 5
        try:
            await wait_for(lambda: rec.handled().get("stuck") == [0, 1, 2], timeout=60,
                           message="the key released")  # fmt: skip
        except BaseException:
            q = f"{prefix}.fulfillment"
            depths = {
                n: await queue_depth(amqp_url, n)
                for n in (q, f"{q}.p0", f"{q}.p0.hold", f"{q}.retry.2s", f"{q}.dlq")
            }
            print("state at the timeout:", depths, [(r.seq, r.attempt, r.ok) for r in rec.runs],
                  rt.intake.holds())  # fmt: skip
            raise
        assert rt.intake.held_keys() == 0


def _replica(url: str, files: tuple[str, str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.ordering_replica", url, *files],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


async def test_a_sigkilled_replica_hands_its_partitions_over_with_order_kept(
    amqp_url: str, partitioner: str, prefix: str, tmp_path: Path
) -> None:
    kind = partitioner
    keys, per_key = 30, 8
    topology = ordered_topology(prefix, delays=["300ms", "600ms"], partitioner=kind)
    topo_file, store, record = tmp_path / "t.json", tmp_path / "s.db", tmp_path / "r.jsonl"
    topo_file.write_text(json.dumps(topology.spec.model_dump(by_alias=True, exclude_none=True)))
    files = (str(topo_file), str(store), str(record))
    events = [
        ("order.placed", {"order_id": f"o-{k}", "seq": s, "n": s * keys + k})
        for s in range(per_key) for k in range(keys)
    ]  # fmt: skip

    def lines() -> list[dict[str, Any]]:
        if not record.exists():
            return []
        return [json.loads(x) for x in record.read_text().splitlines() if x.endswith("}")]

    def oks() -> set[tuple[str, int]]:
        return {(x["key"], x["seq"]) for x in lines() if x["what"] == "ok"}

    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        first = await asyncio.to_thread(_replica, amqp_url, files)
        second = await asyncio.to_thread(_replica, amqp_url, files)
        third = None
        try:
            await pub.publish_many(events)
            await wait_for(lambda: len(oks()) >= 60, timeout=30, message="a quarter handled")
            assert first.pid in {x["pid"] for x in lines()}, "the first replica is active"
            first.kill()  # SIGKILL: no drain, unacked deliveries go to the standby
            killed_at = time.time()
            third = await asyncio.to_thread(_replica, amqp_url, files)
            await wait_for(lambda: len(oks()) == keys * per_key, timeout=60,
                           message="every event handled after the kill")  # fmt: skip
        finally:
            for proc in (first, second, third):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(10)
    runs = lines()
    handed = {x["pid"] for x in runs if x["at"] > killed_at}
    assert handed and first.pid not in handed
    starts = [x["at"] for x in runs if x["at"] > killed_at]
    print(f"first event after the kill ran {min(starts) - killed_at:.2f}s later, on {handed}")
    for k in range(keys):
        key = f"o-{k}"
        mine = [x for x in runs if x["key"] == key]
        firsts: list[int] = []
        for x in mine:
            if x["what"] == "ok" and x["seq"] not in firsts:
                firsts.append(x["seq"])
        story = "\n".join(
            f"{x['at'] - killed_at:+.3f} pid {x['pid']} #{x['seq']} try {x['attempt']} {x['what']}"
            for x in mine
        )
        assert firsts == list(range(per_key)), f"{key} out of order: {firsts}\n{story}"
        # never two of a key at once: a run cut off by the kill ends at the kill
        spans: dict[tuple[int, int, int], list[float]] = {}
        for x in mine:
            spans.setdefault((x["seq"], x["attempt"], x["pid"]), []).append(x["at"])
        intervals = sorted((v[0], v[1] if len(v) > 1 else killed_at) for v in spans.values())
        for a, b in itertools.pairwise(intervals):
            assert a[1] <= b[0] + 0.001, f"{key}: two at once {a} {b}"


async def test_a_retry_delay_longer_than_consumer_timeout_keeps_order_and_the_channel(
    nodes: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    node = nodes.new(f"ord-ct-{prefix[-4:]}", config=["consumer_timeout = 2000"])
    await asyncio.to_thread(nodes.start, [node])
    url = node.url()
    try:
        topology = ordered_topology(prefix, delays=["5s"], partitions=1)
        rec = Recorder()
        async with (
            applied(url, topology),
            running(url, topology, "fulfillment",
                    rec.router("a", lambda e, c: e["seq"] == 0 and c.attempt == 1)) as rt,
            Publisher(url, topology) as pub,
        ):  # fmt: skip
            for seq in range(4):
                await pub.publish("order.placed", {"order_id": "slow", "seq": seq, "n": 0})
            await pub.publish("order.placed", {"order_id": "fast", "seq": 0, "n": 0})
            await wait_for(lambda: rec.handled().get("slow") == [0, 1, 2, 3], timeout=30,
                           message="the held key, after a retry longer than consumer_timeout")  # fmt: skip
            assert rt.ready, "the consumer channel survived"
        assert rec.handled()["fast"] == [0]
        assert "new channel" not in caplog.text and "PRECONDITION_FAILED" not in caplog.text
        assert "consumer ack timed out" not in caplog.text
    finally:
        await asyncio.to_thread(node.stop)
