"""Fault injection: cut connections, kill processes, feed garbage, race duplicates.

Every scenario counts events sent, confirmed, handled (effects, once each), duplicates absorbed
by the idempotency store, and lost (confirmed but never handled) — which must be 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import yaml
from prometheus_client import CollectorRegistry

from bus import Context, Router
from bus.consume.runtime import Runtime
from bus.metrics import Metrics
from bus.produce.publisher import Publisher
from bus.stores import MemoryStore, open_store
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology, queue_depth, topology_doc
from tests.integration.proxy import Proxy

PG_URL = os.environ.get("BUS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def outcomes(metrics: Metrics, outcome: str) -> int:
    total = 0.0
    for metric in metrics.registry.collect():
        for s in metric.samples:
            if s.name == "bus_consumed_total" and s.labels.get("outcome") == outcome:
                total += s.value
    return int(total)


class Effects:
    """What handlers did: every run, and the distinct events whose effect happened."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()

    def router(self, pattern: str = "order.placed", delay: float = 0.0) -> Router:
        router = Router()

        @router.on(pattern)
        async def effect(event: dict[str, Any], ctx: Context) -> None:
            if delay:
                await asyncio.sleep(delay)
            self.runs[ctx.id] += 1

        return router


async def test_connections_cut_mid_stream_lose_nothing_and_run_each_effect_once(
    amqp_url: str, prefix: str, fault_report: Any
) -> None:
    n = 2000
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"]}})
    effects = Effects()
    metrics = Metrics(CollectorRegistry())
    pub_proxy, sub_proxy = await Proxy.to(amqp_url).start(), await Proxy.to(amqp_url).start()
    started = time.monotonic()
    async with applied(amqp_url, topology):
        rt = Runtime(topology, "svc", effects.router(), url=sub_proxy.url(amqp_url),
                     store=MemoryStore(), metrics=metrics)  # fmt: skip
        await rt.start()
        pub = await Publisher(
            pub_proxy.url(amqp_url), topology, deadline=60, metrics=metrics
        ).connect()
        confirmed: list[str] = []

        async def publish_all() -> None:
            # a steady ~250/s stream, so every cut lands while events are in flight
            async def one(i: int) -> None:
                event_id = await pub.publish("order.placed", {"order_id": str(i)}, id=f"c-{i}")
                confirmed.append(event_id)

            tasks = []
            for i in range(n):
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(0.004)
            await asyncio.gather(*tasks)

        severed: list[int] = []

        async def chaos() -> None:
            for k in range(6):
                proxy = sub_proxy if k % 2 else pub_proxy
                await wait_for(lambda p=proxy: p.connections, timeout=15, message="a reconnect")  # type: ignore[misc]
                await asyncio.sleep(0.3)
                severed.append(proxy.cut())

        await asyncio.gather(publish_all(), chaos())
        await wait_for(lambda: len(effects.runs) >= n, timeout=60, message=f"{n} effects")
        await wait_for(lambda: rt.ready, timeout=20, message="the subscriber to resume")
        await wait_for(lambda: _drained(amqp_url, f"{prefix}.svc"), timeout=20, message="drain")
        await pub.close()
        await rt.stop(5)
    await pub_proxy.close()
    await sub_proxy.close()
    lost = set(confirmed) - set(effects.runs)
    fault_report(scenario="proxy cuts publisher+subscriber x6", sent=n, confirmed=len(confirmed),
                 handled=len(effects.runs), duplicates=outcomes(metrics, "duplicate"),
                 lost=len(lost), seconds=round(time.monotonic() - started, 1))  # fmt: skip
    assert all(severed), f"every cut must sever live connections: {severed}"
    assert len(confirmed) == n
    assert not lost
    assert max(effects.runs.values()) == 1, "an effect ran twice"


async def _drained(url: str, queue: str) -> bool:
    return await queue_depth(url, queue) == 0


async def test_the_same_event_three_times_and_two_racing_replicas_run_each_effect_once(
    amqp_url: str, prefix: str, fault_report: Any
) -> None:
    n = 300
    subscriber = f"svc-{prefix}"  # unique rows in the shared PostgreSQL table
    topology = make_topology(prefix, {subscriber: {"keys": ["order.placed"]}})
    effects = Effects()
    metrics = Metrics(CollectorRegistry())
    started = time.monotonic()
    async with applied(amqp_url, topology):
        store_a, store_b = await open_store(PG_URL), await open_store(PG_URL)
        replicas = []
        for store in (store_a, store_b):
            rt = Runtime(topology, subscriber, effects.router(delay=0.01), url=amqp_url,
                         store=store, metrics=metrics)  # fmt: skip
            await rt.start()
            replicas.append(rt)
        async with Publisher(amqp_url, topology, metrics=metrics) as pub:
            events = [("order.placed", {"order_id": str(i)}) for i in range(n)]
            for _ in range(3):  # every event published three times, with the same id
                await pub.publish_many(
                    [pub.event(t, d, id=f"d-{d['order_id']}") for t, d in events]
                )
        await wait_for(lambda: outcomes(metrics, "ok") + outcomes(metrics, "duplicate") >= 3 * n,
                       timeout=60, message="every copy handled or absorbed")  # fmt: skip
        for rt in replicas:
            await rt.stop(5)
        await store_a.close()
        await store_b.close()
    fault_report(scenario="each id published 3x, 2 replicas, PostgreSQL store", sent=3 * n,
                 confirmed=3 * n, handled=len(effects.runs), duplicates=outcomes(metrics, "duplicate"),
                 lost=n - len(effects.runs), seconds=round(time.monotonic() - started, 1))  # fmt: skip
    assert len(effects.runs) == n
    assert max(effects.runs.values()) == 1, "two replicas both ran one event"
    assert outcomes(metrics, "duplicate") == 2 * n


async def test_malformed_input_of_every_kind_is_parked_or_handled_and_nothing_stops(
    amqp_url: str, prefix: str, fault_report: Any
) -> None:
    topology = make_topology(prefix, {"svc": {"keys": ["#"]}})
    effects = Effects()
    metrics = Metrics(CollectorRegistry())
    big = b'{"order_id":"big","pad":"' + b"x" * (10 * 1024 * 1024) + b'"}'
    odd_headers: dict[str, Any] = {
        "bus-attempt": "not a number", "nested": {"a": [1, 2, {"b": "c"}]}, "raw": bytearray(b"\x00\xff"),
        "decimal": Decimal("1.5"), "flag": True, "when": time.time(), "none": None,
        "x-death": "garbage", "cloudEvents_time": 12345,
    }  # fmt: skip
    cases: list[tuple[str, bytes, dict[str, Any]]] = [
        ("not-json", b"{nope", {"type": "order.placed"}),
        ("not-utf8", b"\xff\xfe\xfa", {"type": "order.placed"}),
        ("no-type", b'{"order_id":"1"}', {}),
        ("schema", b'{"order_id": 1}', {"type": "order.placed"}),
        ("array", b"[1,2,3]", {"type": "order.placed"}),
        ("unknown-type", b"{}", {"type": "order.unknown"}),
        ("huge-10MB", big, {"type": "order.placed"}),
        ("odd-headers", b'{"order_id":"odd"}', {"type": "order.placed", "headers": odd_headers}),
        ("empty-body", b"", {"type": "order.placed"}),
    ]
    started = time.monotonic()
    async with applied(amqp_url, topology):
        rt = Runtime(topology, "svc", effects.router(), url=amqp_url, store=MemoryStore(),
                     metrics=metrics)  # fmt: skip
        await rt.start()
        conn = await aio_pika.connect(amqp_url)
        ch = await conn.channel()
        ex = await ch.get_exchange(f"{prefix}.events")
        for name, body, props in cases:
            key = props.get("type") or "order.placed"
            await ex.publish(aio_pika.Message(body, message_id=name, **props), routing_key=key)
        await conn.close()
        await wait_for(
            lambda: outcomes(metrics, "ok") + outcomes(metrics, "dead") >= len(cases),
            timeout=30, message="every malformed message accounted for",
        )  # fmt: skip
        assert rt.ready, "the subscriber must keep consuming"
        parked = await queue_depth(amqp_url, f"{prefix}.svc.dlq")
        await rt.stop(5)
    handled = sorted(effects.runs)
    fault_report(scenario="malformed input (9 kinds, incl. 10 MB body)", sent=len(cases),
                 confirmed=len(cases), handled=len(handled), duplicates=0,
                 lost=len(cases) - len(handled) - parked,
                 seconds=round(time.monotonic() - started, 1))  # fmt: skip
    assert handled == ["huge-10MB", "odd-headers"]
    assert parked == len(cases) - 2


def _spawn(topo: Path, tmp: Path, url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bus.cli", "run", "svc"],
        env={**os.environ, "BUS_URL": url, "BUS_TOPOLOGY": str(topo), "FAULT_DIR": str(tmp),
             "BUS_STORE_URL": f"sqlite:///{tmp / 'processed.db'}", "BUS_CLAIM_LEASE_SECONDS": "1",
             "FAULT_HANDLER_SECONDS": "0.02"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def test_a_subscriber_sigkilled_repeatedly_mid_handler_loses_nothing(
    amqp_url: str, prefix: str, tmp_path: Path, fault_report: Any
) -> None:
    n = 500
    doc = topology_doc(prefix, {"svc": {"keys": ["order.placed"],
                                        "handlers": "tests.integration.fault_handlers:idempotent_effect"}})  # fmt: skip
    topo = tmp_path / "topology.yaml"
    topo.write_text(yaml.safe_dump(doc))
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"]}})
    started = time.monotonic()
    kills = 0
    async with applied(amqp_url, topology):
        async with Publisher(amqp_url, topology) as pub:
            ids = await pub.publish_many([pub.event("order.placed", {"order_id": str(i)}, id=f"k-{i}")
                                          for i in range(n)])  # fmt: skip
        proc = _spawn(topo, tmp_path, amqp_url)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and kills < 12:
            await asyncio.sleep(0.7)
            if await queue_depth(amqp_url, f"{prefix}.svc") == 0 and _effects(tmp_path)[0] >= n:
                break
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
            kills += 1
            proc = _spawn(topo, tmp_path, amqp_url)
        await wait_for(lambda: _effects(tmp_path)[0] >= n, timeout=30, message=f"{n} effects")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    distinct, runs = _effects(tmp_path)
    fault_report(scenario=f"subscriber SIGKILLed x{kills} mid-handler", sent=n, confirmed=len(ids),
                 handled=distinct, duplicates=runs - distinct, lost=n - distinct,
                 seconds=round(time.monotonic() - started, 1))  # fmt: skip
    assert kills >= 3, "the scenario must actually kill the subscriber several times"
    assert distinct == n, f"lost {n - distinct}"


def _effects(tmp: Path) -> tuple[int, int]:
    db = tmp / "effects.db"
    if not db.exists():
        return 0, 0
    with sqlite3.connect(db, timeout=10) as c:
        try:
            distinct, runs = c.execute(
                "SELECT COUNT(*), COALESCE(SUM(runs), 0) FROM effects"
            ).fetchone()
        except sqlite3.OperationalError:
            return 0, 0
    return int(distinct), int(runs)


pytestmark = [pytest.mark.rabbitmq4, pytest.mark.timeout(300)]
