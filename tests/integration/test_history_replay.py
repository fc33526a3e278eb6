"""Replay and backfill on the real broker: only the named subscriber is fed; what it handled is
absorbed unless --again; a dry run sends nothing; an interrupted run started again loses nothing;
a backfill while producers keep publishing hands every event over once; bad inputs are one line,
exit 2, before anything is sent."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from bus import Context, Publisher, Router
from bus.amqp.connection import connect_plain
from bus.history import Selection
from bus.history.replay import replay
from bus.stores import MemoryStore
from bus.topology.model import from_dict
from tests.conftest import wait_for
from tests.integration.helpers import applied, delete_topology, queue_depth, running
from tests.integration.history_kit import history_doc, history_topology, logged

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

TWO = {"email": {"keys": ["order.placed"]}, "audit": {"keys": ["order.*"]}}


def counting(calls: Counter[str]) -> Router:
    router = Router()

    @router.on("#")
    async def count(event: dict[str, Any], ctx: Context) -> None:
        calls[ctx.id] += 1

    return router


async def _publish(url: str, topology: Any, n: int, kind: str = "order.placed") -> list[str]:
    async with Publisher(url, topology) as pub:
        return await pub.publish_many([(kind, {"order_id": f"o-{i}"}) for i in range(n)])


async def test_replay_feeds_only_the_named_subscriber_and_absorbs_what_it_handled(
    amqp_url: str, prefix: str
) -> None:
    topology = history_topology(prefix, TWO)
    email: Counter[str] = Counter()
    store = MemoryStore()
    async with applied(amqp_url, topology):
        placed = await _publish(amqp_url, topology, 5)
        shipped = await _publish(amqp_url, topology, 2, "order.shipped")
        async with running(amqp_url, topology, "email", counting(email), store):
            await wait_for(lambda: len(email) == 5, timeout=10, message="email handled 5")
            audit_before = await queue_depth(amqp_url, f"{prefix}.audit")
            conn = await connect_plain(amqp_url)
            try:
                sub = topology.subscriber("email")
                dry = await replay(conn, topology, sub, Selection(), dry_run=True)
                assert dry.per_type == {"order.placed": 5}  # its binding: not order.shipped
                assert await queue_depth(amqp_url, f"{prefix}.email") == 0
                counted = _replayed_total("email")
                out = await replay(conn, topology, sub, Selection())
                assert out.per_type == {"order.placed": 5}
                assert _replayed_total("email") == counted + 5  # bus_replayed_total
                await wait_for(lambda: _drained(amqp_url, f"{prefix}.email"), timeout=10,
                               message="the copies consumed")  # fmt: skip
                assert all(email[i] == 1 for i in placed), email  # absorbed: not run again
                again = await replay(conn, topology, sub, Selection(), again=True)
                assert again.total == 5
                await wait_for(lambda: all(email[i] == 2 for i in placed), timeout=10,
                               message="--again ran each once more")  # fmt: skip
            finally:
                await conn.close()
        assert await queue_depth(amqp_url, f"{prefix}.audit") == audit_before == 7
    assert not set(shipped) & set(email)


def _replayed_total(subscriber: str) -> float:
    from prometheus_client import REGISTRY

    labels = {"subscriber": subscriber, "type": "order.placed"}
    return REGISTRY.get_sample_value("bus_replayed_total", labels) or 0.0


async def _drained(url: str, queue: str) -> bool:
    return await queue_depth(url, queue) == 0


async def test_an_interrupted_replay_run_again_loses_nothing(amqp_url: str, prefix: str) -> None:
    topology = history_topology(prefix, TWO)
    calls: Counter[str] = Counter()
    store = MemoryStore()
    sub = topology.subscriber("audit")
    async with applied(amqp_url, topology):
        ids = await _publish(amqp_url, topology, 3000)
        conn = await connect_plain(amqp_url)
        try:
            seen = 0

            def progress(n: int, _: str) -> None:
                nonlocal seen
                seen = n

            task = asyncio.create_task(
                replay(conn, topology, sub, Selection(), again=True, progress=progress)
            )
            await wait_for(lambda: seen >= 500, timeout=20, message="half way")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            first = await queue_depth(amqp_url, f"{prefix}.audit") - 3000
            assert 0 < first < 3000, f"the first run copied {first} of 3000"
            out = await replay(conn, topology, sub, Selection())
            assert out.total == 3000
        finally:
            await conn.close()
        async with running(amqp_url, topology, "audit", counting(calls), store):
            await wait_for(lambda: all(calls[i] >= 1 for i in ids), timeout=60,
                           message="every event handled")  # fmt: skip
            await wait_for(lambda: _drained(amqp_url, f"{prefix}.audit"), timeout=60,
                           message="the queue drained")  # fmt: skip
    assert max(calls.values()) <= 2  # the original, and the --again copy when it got there


def bus(args: list[str], url: str, topology: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BUS_URL": url, "BUS_TOPOLOGY": str(topology)}
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", *args], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


async def test_backfill_while_producers_keep_publishing_hands_every_event_over_once(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    doc = history_doc(prefix, {"email": {"keys": ["order.placed"]}})
    before = from_dict(doc)
    doc["subscribers"]["search"] = {
        "handlers": "tests.integration.helpers:EMPTY", "queue": f"{prefix}.search",
        "bindings": [{"exchange": f"{prefix}.events", "keys": ["order.#"]}], "backfill": "30m",
    }  # fmt: skip
    after = from_dict(doc)
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(doc))
    calls: Counter[str] = Counter()
    async with applied(amqp_url, before):
        old = await _publish(amqp_url, before, 400)
        planned = bus(["topology", "plan"], amqp_url, path)
        assert planned.returncode == 0, planned.stderr
        assert "backfill search: will copy 400 events" in planned.stdout, planned.stdout
        new: list[str] = []
        stop = asyncio.Event()

        async def keep_publishing() -> None:
            async with Publisher(amqp_url, before) as pub:
                i = 0
                while not stop.is_set():
                    new.append(await pub.publish("order.shipped", {"order_id": f"n-{i}"}))
                    i += 1

        producer = asyncio.create_task(keep_publishing())
        await wait_for(lambda: len(new) >= 20, timeout=10, message="publishing under way")
        applied_ = await asyncio.to_thread(bus, ["topology", "apply"], amqp_url, path)
        await asyncio.sleep(0.3)
        stop.set()
        await producer
        assert applied_.returncode == 0, applied_.stderr
        assert "backfill search: copied" in applied_.stdout, applied_.stdout
        try:
            async with running(amqp_url, after, "search", counting(calls), MemoryStore()):
                every = old + new
                await wait_for(lambda: all(calls[i] == 1 for i in every), timeout=60,
                               message="every old and new event handled")  # fmt: skip
                await wait_for(lambda: _drained(amqp_url, f"{prefix}.search"), timeout=30,
                               message="the overlap absorbed")  # fmt: skip
            assert set(calls) == set(old + new) and max(calls.values()) == 1
            again = bus(["topology", "apply"], amqp_url, path)
            assert "backfill" not in again.stdout  # once: only when the queue is created
        finally:
            await delete_topology(amqp_url, after)


async def test_bus_history_prints_json_lines_and_a_table(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    doc = history_doc(prefix, TWO)
    topology = from_dict(doc)
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(doc))
    async with applied(amqp_url, topology):
        async with Publisher(amqp_url, topology) as pub:
            await pub.publish("order.placed", {"order_id": "o-1"}, id="h-1", correlation_id="c")
            await pub.publish("order.shipped", {"order_id": "o-1"}, id="h-2")
        got = bus(["history", f"{prefix}.events", "--json", "--since", "1h"], amqp_url, path)
        table = bus(["history", f"{prefix}.events", "--type", "order.shipped"], amqp_url, path)
        dry = bus(["replay", "email", "--since", "1h", "--dry-run"], amqp_url, path)
    assert got.returncode == 0, got.stderr
    lines = [json.loads(line) for line in got.stdout.splitlines()]
    assert [(x["id"], x["type"], x["correlation_id"]) for x in lines] == [
        ("h-1", "order.placed", "c"), ("h-2", "order.shipped", None),
    ]  # fmt: skip
    assert set(lines[0]) == {"id", "type", "time", "source", "correlation_id", "data"}
    assert "h-2" in table.stdout and "h-1" not in table.stdout and "1 event" in table.stdout
    assert "would copy 1 events" in dry.stdout, dry.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["replay", "nobody", "--since", "1h", "--yes"], "no subscriber 'nobody'"),
        (["replay", "email", "--since", "yesterday", "--yes"], "--since"),
        (["replay", "email", "--since", "1h", "--until", "soon", "--yes"], "--until"),
        (["history", "{prefix}.events", "--since", "last week"], "--since"),
        (["history", "{prefix}.nowhere"], "no exchange"),
        (["history", "{prefix}.plain"], "keeps no history"),
        (["replay", "plain", "--since", "1h", "--yes"], "keeps no history"),
        (["topology", "validate", "--no-import", "-t", "{long}"], "longer than the history"),
        (["topology", "apply", "-t", "{long}"], "longer than the history"),
    ],
)
async def test_bad_inputs_are_one_line_exit_2_before_anything_is_sent(
    amqp_url: str, prefix: str, tmp_path: Path, args: list[str], says: str
) -> None:
    doc = history_doc(prefix, TWO)
    doc["exchanges"][f"{prefix}.plain"] = {"type": "topic"}
    doc["events"]["misc.thing"] = {"exchange": f"{prefix}.plain"}
    doc["subscribers"]["plain"] = {
        "handlers": "tests.integration.helpers:EMPTY", "queue": f"{prefix}.plain",
        "bindings": [{"exchange": f"{prefix}.plain", "keys": ["misc.thing"]}],
    }  # fmt: skip
    topology = from_dict(doc)
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(doc))
    doc["subscribers"]["email"]["backfill"] = "2h"  # the history keeps 1h
    long = tmp_path / "long.yaml"
    long.write_text(yaml.safe_dump(doc))
    argv = [a.format(prefix=prefix, long=long) for a in args]
    queues = [f"{prefix}.email", f"{prefix}.audit", f"{prefix}.plain"]
    async with applied(amqp_url, topology):
        await _publish(amqp_url, topology, 2)
        before = [await queue_depth(amqp_url, q) for q in queues]
        r = await asyncio.to_thread(bus, argv, amqp_url, path)
        assert [await queue_depth(amqp_url, q) for q in queues] == before, "something was sent"
        assert len(await logged(amqp_url, prefix)) == 2, "the log unchanged"
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], r.stderr
    assert "Traceback" not in r.stderr
