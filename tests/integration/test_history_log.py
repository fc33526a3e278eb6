"""The event log of an exchange on the real broker: every way of publishing lands in it once;
retries, DLQ replays and history replays never do; the envelope survives it."""

from __future__ import annotations

import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bus import Context, Outbox, Publisher, Router
from bus.amqp.connection import connect_plain
from bus.history import History, Selection
from bus.history.replay import replay
from bus.ops import dlq
from bus.stores import MemoryStore
from bus.topology import apply as applier
from bus.topology.diff import diff
from bus.topology.plan import desired
from tests.conftest import wait_for
from tests.integration.helpers import applied, queue_depth, running
from tests.integration.history_kit import history_topology, logged
from tests.integration.outbox_kit import outbox_db, relaying

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)


def _ids(events: list[Any]) -> Counter[str]:
    return Counter(e.id for e in events)


async def test_every_way_of_publishing_lands_in_the_log_exactly_once(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topology = history_topology(prefix, {"email": {"keys": ["order.placed"]}})
    async with applied(amqp_url, topology):
        async with Publisher(amqp_url, topology) as pub:
            await pub.publish("order.placed", {"order_id": "o-1"}, id="direct-1")
            await pub.publish_many(
                [("order.shipped", {"n": i}) for i in range(3)]
            )  # ids are new: counted by type below
            await pub.publish("order.placed", {"order_id": "o-2"}, id="delayed-1", delay=1)
        async with outbox_db("sqlite", tmp_path) as outbox_url:
            db = sqlite3.connect(outbox_url.removeprefix("sqlite:///"))
            Outbox(topology, source="orders-api").add_sync(
                db, "order.placed", {"order_id": "o-3"}, id="relayed-1"
            )
            db.commit()
            db.close()
            async with relaying(outbox_url, topology, amqp_url):
                await wait_for(
                    lambda: _has(amqp_url, prefix, "relayed-1"), timeout=10,
                    message="the relayed row in the log",
                )  # fmt: skip
        await wait_for(lambda: _has(amqp_url, prefix, "delayed-1"), timeout=10,
                       message="the delayed event in the log once delivered")  # fmt: skip
        events = await logged(amqp_url, prefix)
    ids = _ids(events)
    assert ids["direct-1"] == 1 and ids["delayed-1"] == 1 and ids["relayed-1"] == 1, ids
    assert Counter(e.type for e in events) == {"order.placed": 3, "order.shipped": 3}


async def test_each_scheduled_firing_lands_in_the_log_exactly_once(
    amqp_url: str, prefix: str
) -> None:
    import asyncio

    from prometheus_client import CollectorRegistry

    from bus.scheduling.leader import Scheduler
    from bus.topology.model import from_dict
    from tests.integration.history_kit import history_doc
    from tests.integration.test_scheduler import delete_queues

    doc = history_doc(prefix, {"sink": {"keys": ["tick.*"]}},
                      events={"tick.second": {"exchange": f"{prefix}.events"}})  # fmt: skip
    doc["schedules"] = {"every-second": {"every": "1s", "event": "tick.second"}}
    topology = from_dict(doc, source=f"test:{prefix}")
    lock, stop = f"{prefix}.lock", asyncio.Event()
    async with applied(amqp_url, topology):
        sched = Scheduler(amqp_url, topology, lock_queue=lock, registry=CollectorRegistry())
        task = asyncio.create_task(sched.run(stop))
        try:

            async def fired() -> bool:
                return len(await logged(amqp_url, prefix)) >= 3

            await wait_for(fired, timeout=30, message="three firings in the log")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await delete_queues(amqp_url, lock, f"{lock}.state")
        events = await logged(amqp_url, prefix)
    assert {e.type for e in events} == {"tick.second"}
    assert max(_ids(events).values()) == 1, _ids(events)  # each firing's id once
    assert len({e.time for e in events}) == len(events)


async def _has(url: str, prefix: str, event_id: str) -> bool:
    return any(e.id == event_id for e in await logged(url, prefix, id=event_id))


async def test_retries_dlq_replays_and_history_replays_never_enter_the_log_again(
    amqp_url: str, prefix: str
) -> None:
    topology = history_topology(prefix, {"email": {"keys": ["order.placed"]}})
    calls: Counter[str] = Counter()
    router = Router()

    @router.on("order.placed")
    async def flaky(event: dict[str, Any], ctx: Context) -> None:
        calls[ctx.id] += 1
        if ctx.id == "fails-once" and calls[ctx.id] == 1:
            raise RuntimeError("first try fails")
        if ctx.id == "always-fails" and calls[ctx.id] <= 4:  # 1 + 3 retries: parked
            raise RuntimeError("fails")

    sub = topology.subscriber("email")
    async with applied(amqp_url, topology):
        async with running(amqp_url, topology, "email", router, MemoryStore()):
            async with Publisher(amqp_url, topology) as pub:
                for i in ("fails-once", "always-fails", "fine"):
                    await pub.publish("order.placed", {"order_id": i}, id=i)
            await wait_for(lambda: calls["fails-once"] == 2, timeout=30, message="the retry")
            conn = await connect_plain(amqp_url)
            try:
                await wait_for(lambda: _parked(conn, sub), timeout=30, message="the parked one")
                # browsing took it and gave it back: on RabbitMQ 4 the give-back is processed
                # after the browse returns, and a replay sees only what is ready
                await wait_for(lambda: _ready(amqp_url, sub.dlq), timeout=10,
                               message="the parked one ready again")  # fmt: skip
                await dlq.replay(conn, sub, None)
                await wait_for(lambda: calls["always-fails"] == 5, timeout=30,
                               message="the DLQ replay handled")  # fmt: skip
                out = await replay(conn, topology, sub, Selection(), again=True)
                assert out.total == 3
                await wait_for(lambda: calls["fine"] == 2, timeout=30,
                               message="the --again replay handled")  # fmt: skip
            finally:
                await conn.close()
        events = await logged(amqp_url, prefix)
    assert _ids(events) == {"fails-once": 1, "always-fails": 1, "fine": 1}


async def _parked(conn: Any, sub: Any) -> bool:
    return bool(await dlq.browse(conn, sub))


async def _ready(url: str, queue: str) -> bool:
    return await queue_depth(url, queue) == 1


async def test_the_envelope_survives_the_log_unchanged(amqp_url: str, prefix: str) -> None:
    topology = history_topology(prefix, {"email": {"keys": ["order.placed"]}})
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with (
        applied(amqp_url, topology),
        Publisher(amqp_url, topology, source="orders-api") as pub,
    ):
        await pub.publish(
            "order.placed", {"order_id": "o-9", "lines": [1, 2]}, id="env-1",
            correlation_id="corr-1", traceparent=trace,
        )  # fmt: skip
        [e] = await logged(amqp_url, prefix)
    assert (e.id, e.type, e.source, e.correlation_id) == (
        "env-1", "order.placed", "orders-api", "corr-1",
    )  # fmt: skip
    assert e.data == {"order_id": "o-9", "lines": [1, 2]}
    assert e.headers.get("traceparent") == trace
    assert e.time is not None and abs(e.time - datetime.now(UTC)) < timedelta(minutes=1)
    assert e.headers.get("cloudEvents_time") == e.time.isoformat().replace("+00:00", "Z")


async def test_the_stream_carries_the_declared_limits_and_apply_is_idempotent(
    amqp_url: str, prefix: str
) -> None:
    topology = history_topology(
        prefix, {"email": {"keys": ["order.placed"]}},
        history={"max_age": "2d", "max_bytes": "50MB"},
    )  # fmt: skip
    async with applied(amqp_url, topology):
        conn = await connect_plain(amqp_url)
        try:
            want = desired(topology)
            steps = diff(want, await applier.observe(conn, want))
        finally:
            await conn.close()
    stream = [s for s in steps if s.decl.key == f"queue {prefix}.events.history"]
    assert [str(s.action) for s in stream] == ["unchanged"], [s.line() for s in stream]
    assert dict(stream[0].decl.arguments) == {  # type: ignore[union-attr]
        "x-queue-type": "stream", "x-max-age": "2D", "x-max-length-bytes": 50_000_000,
    }  # fmt: skip


async def test_reading_stops_at_the_end_of_the_log_as_it_was_and_filters_exactly(
    amqp_url: str, prefix: str
) -> None:
    topology = history_topology(prefix, {"email": {"keys": ["order.placed"]}})
    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        await pub.publish("order.placed", {"order_id": "a"}, id="a", correlation_id="c-1")
        cut = datetime.now(UTC)
        await pub.publish("order.shipped", {"order_id": "b"}, id="b", correlation_id="c-1")
        await pub.publish("order.placed", {"order_id": "c"}, id="c")
        async with History(amqp_url) as h:
            seen = []
            async for e in h.read(f"{prefix}.events"):
                seen.append(e.id)
                if e.id == "a":  # published while reading: after the end the read began with
                    await pub.publish("order.placed", {"order_id": "d"}, id="d")
            assert seen == ["a", "b", "c"]
            since = [e.id async for e in h.read(f"{prefix}.events", since=cut)]
            until = [e.id async for e in h.read(f"{prefix}.events", until=cut)]
            typed = [e.id async for e in h.read(f"{prefix}.events", types=["order.placed"])]
            corr = [e.id async for e in h.read(f"{prefix}.events", correlation_id="c-1")]
            limited = [e.id async for e in h.read(f"{prefix}.events", limit=2)]
    assert since == ["b", "c", "d"]
    assert until == ["a"]
    assert typed == ["a", "c", "d"]
    assert corr == ["a", "b"]
    assert limited == ["a", "b"]


async def test_reading_an_exchange_without_history_is_one_clear_error(
    amqp_url: str, prefix: str
) -> None:
    from bus.errors import NoHistory

    async with History(amqp_url) as h:
        with pytest.raises(NoHistory, match="keeps no history"):
            [e async for e in h.read(f"{prefix}.nothing")]


async def test_apply_prune_removes_the_log_only_once_the_topology_no_longer_asks_for_it(
    amqp_url: str, prefix: str
) -> None:
    from bus.topology.model import from_dict
    from tests.integration.history_kit import history_doc

    doc = history_doc(prefix, {"email": {"keys": ["order.placed"]}})
    with_log = from_dict(doc)
    del doc["exchanges"][f"{prefix}.events"]["history"]
    without = from_dict(doc)
    stream = f"{prefix}.events.history"
    async with applied(amqp_url, with_log):
        conn = await connect_plain(amqp_url)
        try:
            for prune in (False, True):  # still asked for: neither plan touches it
                want = desired(with_log)
                steps = diff(want, await applier.observe(conn, want), prune=prune)
                assert {str(s.action) for s in steps if s.decl.key == f"queue {stream}"} == {
                    "unchanged"
                }
            want = desired(without)
            kept = diff(want, await applier.observe(conn, want))
            assert [str(s.action) for s in kept if s.decl.key == f"queue {stream}"] == ["keep"]
            pruned = diff(want, await applier.observe(conn, want), prune=True)
            assert [str(s.action) for s in pruned if s.decl.key == f"queue {stream}"] == ["delete"]
            await applier.apply(conn, pruned, want)
            assert await applier.queue_depth(conn, stream) is None
        finally:
            await conn.close()
