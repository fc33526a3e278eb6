"""The outbox end to end: rows written in the producer's transaction, `bus relay`, the broker.

Each test gets a fresh PostgreSQL database (or SQLite file) and its own topology; an audit
queue bound to every event type counts what reached the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest
from typer.testing import CliRunner

from bus.cli import app
from bus.outbox import Outbox, open_outbox
from bus.outbox.relay import serve
from tests.conftest import wait_for
from tests.integration.helpers import applied, get_all, make_topology, queue_depth
from tests.integration.outbox_kit import audited, outbox_db, relaying
from tests.integration.proxy import Proxy

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

ORDER = {"order_id": "o-1"}
BOTH = pytest.mark.parametrize("kind", ["postgresql", "sqlite"])


def audit_topology(prefix: str, keys: list[str] | None = None) -> Any:
    return make_topology(prefix, {"audit": {"keys": keys or ["#"]}})


async def write(
    kind: str,
    url: str,
    outbox: Outbox,
    events: list[tuple[str, Any]],
    *,
    commit: bool = True,
    **kw: Any,
) -> list[str]:
    """Add *events* in one transaction of the producer's own connection."""
    ids: list[str] = []
    if kind == "postgresql":
        conn = await asyncpg.connect(url)
        try:
            tx = conn.transaction()
            await tx.start()
            for t, data in events:
                ids.append(await outbox.add(conn, t, data, **kw))
            await (tx.commit() if commit else tx.rollback())
        finally:
            await conn.close()
    else:
        async with aiosqlite.connect(url.removeprefix("sqlite:///")) as db:
            for t, data in events:
                ids.append(await outbox.add(db, t, data, **kw))
            await (db.commit() if commit else db.rollback())
    return ids


async def raw_sql(kind: str, url: str, statement: str) -> None:
    if kind == "postgresql":
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()
    else:
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute(statement)


async def cli(*args: str) -> Any:
    """`bus ARGS` through the real CLI (on a thread: it runs its own event loop). The CLI
    points the root logger at its own stream: put ours back, the relay keeps logging."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return await asyncio.to_thread(CliRunner().invoke, app, list(args))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def status(url: str) -> dict[str, Any]:
    result = await cli("outbox", "status", "--json", "--outbox-url", url)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@BOTH
async def test_committed_rows_are_published_once_and_rolled_back_rows_never(
    kind: str, amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topology = audit_topology(prefix)
    outbox = Outbox(topology, source="shop")
    async with applied(amqp_url, topology), outbox_db(kind, tmp_path) as url:
        kept = await write(
            kind,
            url,
            outbox,
            [("order.placed", ORDER), ("order.shipped", ORDER)],
            correlation_id="o-1",
        )
        lost = await write(kind, url, outbox, [("order.placed", {"order_id": "o-2"})], commit=False)
        async with relaying(url, topology, amqp_url):
            await wait_for(
                lambda: queue_depth(amqp_url, f"{prefix}.audit"), message="relayed events"
            )
            await wait_for(lambda: _drained(url), message="an empty outbox")
            await asyncio.sleep(0.3)  # anything more would arrive now
        got = await get_all(amqp_url, f"{prefix}.audit")
    assert [m.message_id for m in got] == kept, "committed events once each, in insert order"
    assert lost[0] not in {m.message_id for m in got}
    first = got[0]
    assert first.type == "order.placed" and first.app_id == "shop"
    assert first.correlation_id == "o-1" and first.delivery_mode == 2
    assert first.headers["cloudEvents_id"] == kept[0]
    assert first.headers["cloudEvents_source"] == "shop"
    assert str(first.headers["traceparent"]).startswith("00-")
    assert json.loads(first.body) == ORDER


async def test_rows_of_one_transaction_arrive_in_insert_order_with_two_relays(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topology = audit_topology(prefix)
    outbox = Outbox(topology, source="shop")
    txns, per_txn = 30, 40
    async with applied(amqp_url, topology), outbox_db("postgresql", tmp_path) as url:
        async with (
            relaying(url, topology, amqp_url, batch=50),
            relaying(url, topology, amqp_url, batch=50),
        ):

            async def one(t: int) -> list[str]:
                events = [("order.placed", {"order_id": f"o-{t}-{i}"}) for i in range(per_txn)]
                return await write("postgresql", url, outbox, events, correlation_id=f"tx-{t}")

            written = await asyncio.gather(*(one(t) for t in range(txns)))
            await wait_for(
                lambda: _depth_at_least(amqp_url, f"{prefix}.audit", txns * per_txn),
                timeout=30,
                message=f"{txns * per_txn} events on the audit queue",
            )
        got = await get_all(amqp_url, f"{prefix}.audit")
    assert len(got) == txns * per_txn, "each row once"
    by_txn: dict[str, list[str]] = {}
    for m in got:
        by_txn.setdefault(str(m.correlation_id), []).append(str(m.message_id))
    for t, ids in enumerate(written):
        assert by_txn[f"tx-{t}"] == ids, f"transaction {t} arrived out of insert order"


async def _drained(url: str) -> bool:
    return (await status(url))["pending"] == 0


async def _depth_at_least(url: str, queue: str, n: int) -> bool:
    return await queue_depth(url, queue) >= n


@BOTH
async def test_a_foreign_writers_plain_insert_is_relayed(
    kind: str, amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topology = audit_topology(prefix)
    async with applied(amqp_url, topology), outbox_db(kind, tmp_path) as url:
        await raw_sql(
            kind,
            url,
            """INSERT INTO bus_outbox (id, type, data)
            VALUES ('foreign-1', 'order.placed', '{"order_id": "o-9"}')""",
        )
        async with relaying(url, topology, amqp_url):
            await wait_for(
                lambda: queue_depth(amqp_url, f"{prefix}.audit"), message="the foreign row"
            )
        (m,) = await get_all(amqp_url, f"{prefix}.audit")
    assert m.message_id == "foreign-1" and m.type == "order.placed"
    assert m.app_id == "outbox" and json.loads(m.body) == {"order_id": "o-9"}
    assert m.headers["cloudEvents_specversion"] == "1.0"


@BOTH
async def test_rows_that_are_not_events_or_unroutable_are_set_aside_and_the_rest_flows(
    kind: str, amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    # the audit queue hears order.* only: shipment.requested is declared but unroutable
    topology = audit_topology(prefix, ["order.*"])
    async with applied(amqp_url, topology), outbox_db(kind, tmp_path) as url:
        bad = [
            ("undeclared", "no.such_type", '{"a": 1}'),
            ("schema", "order.placed", '{"no_order_id": true}'),
            ("unroutable", "shipment.requested", '{"order_id": "o-1"}'),
        ]
        if kind == "sqlite":
            bad.append(("not-json", "order.placed", "{oops"))
        values = [
            *bad,
            ("good-1", "order.placed", '{"order_id": "o-1"}'),
            ("good-2", "order.shipped", "{}"),
        ]
        rows = ", ".join(f"('{i}', '{t}', '{d}')" for i, t, d in values)
        await raw_sql(kind, url, f"INSERT INTO bus_outbox (id, type, data) VALUES {rows}")
        async with relaying(url, topology, amqp_url):
            await wait_for(lambda: _drained(url), message="every row relayed or set aside")
        got = await get_all(amqp_url, f"{prefix}.audit")
        st = await status(url)
        assert [m.message_id for m in got] == ["good-1", "good-2"], (
            "the rows behind the bad ones flow"
        )
        reasons = {r["id"]: r["failure"] for r in st["set_aside_rows"]}
        assert st["set_aside"] == len(bad) and set(reasons) == {i for i, _, _ in bad}
        assert "not declared" in reasons["undeclared"]
        assert "schema" in reasons["schema"]
        assert reasons["unroutable"].startswith("unroutable")
        if kind == "sqlite":
            assert "not JSON" in reasons["not-json"]
        again = await cli("outbox", "retry", "--id", "unroutable", "--outbox-url", url)
        assert again.exit_code == 0 and "1 rows back in line" in again.output
        assert (await status(url))["pending"] == 1


async def test_broker_outage_lets_rows_wait_then_they_drain_with_nothing_lost(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topology = audit_topology(prefix)
    outbox = Outbox(topology, source="shop")
    proxy = await Proxy.to(amqp_url).start()
    async with applied(amqp_url, topology), outbox_db("postgresql", tmp_path) as url:
        async with relaying(url, topology, proxy.url(amqp_url), deadline=2.0) as relay:
            first = await write("postgresql", url, outbox, [("order.placed", {"order_id": "o-0"})])
            await wait_for(
                lambda: queue_depth(amqp_url, f"{prefix}.audit"), message="the first event"
            )
            proxy.refusing = True
            proxy.cut()
            await wait_for(lambda: not relay.ready, message="the relay to notice the outage")
            during: list[str] = []
            started = time.monotonic()
            for i in range(50):  # the producer keeps writing: nothing waits for the broker
                during += await write(
                    "postgresql", url, outbox, [("order.placed", {"order_id": f"o-{i}"})]
                )
            writes_took = time.monotonic() - started
            await asyncio.sleep(1.0)
            assert (await status(url))["pending"] == 50, (
                "rows wait in the outbox while the broker is away"
            )
            proxy.refusing = False
            await wait_for(lambda: _drained(url), timeout=30, message="the backlog to drain")
        copies = await audited(amqp_url, f"{prefix}.audit")
    await proxy.close()
    assert set(copies) == {*first, *during}, "nothing lost"
    assert writes_took < 5, f"writing 50 events took {writes_took:.2f}s during the outage"


async def test_sqlite_relays_take_turns_and_a_standby_takes_over(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topology = audit_topology(prefix)
    outbox = Outbox(topology, source="shop")
    async with applied(amqp_url, topology), outbox_db("sqlite", tmp_path) as url:
        first = contextlib.AsyncExitStack()
        await first.enter_async_context(relaying(url, topology, amqp_url))
        await asyncio.sleep(0.3)  # the first relay takes the lease
        async with relaying(url, topology, amqp_url):
            ids = await write(
                "sqlite",
                url,
                outbox,
                [("order.placed", {"order_id": f"o-{i}"}) for i in range(100)],
            )
            await wait_for(lambda: _drained(url), message="the first batch")
            await first.aclose()  # the leader stops and hands the lease over
            ids += await write("sqlite", url, outbox, [("order.placed", {"order_id": "late"})])
            await wait_for(lambda: _drained(url), message="the standby to relay")
        copies = await audited(amqp_url, f"{prefix}.audit")
    assert copies == Counter(dict.fromkeys(ids, 1)), "each row once, by one relay at a time"


async def test_a_relay_started_before_the_table_exists_waits_then_relays(
    amqp_url: str, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topology = audit_topology(prefix)
    url = f"sqlite:///{tmp_path / 'late.db'}"
    stop = asyncio.Event()
    async with applied(amqp_url, topology):
        relay = asyncio.create_task(serve(amqp_url, url, topology, stop=stop))
        await wait_for(
            lambda: any("relay waiting" in r.getMessage() for r in caplog.records),
            message="the relay to say it waits for bus outbox init",
        )
        assert not relay.done()
        await (await open_outbox(url, create=True)).close()  # the migration runs
        ids = await write("sqlite", url, Outbox(topology), [("order.shipped", {})])
        await wait_for(lambda: queue_depth(amqp_url, f"{prefix}.audit"), message="the event")
        stop.set()
        await asyncio.wait_for(relay, 15)
        copies = await audited(amqp_url, f"{prefix}.audit")
    assert copies == Counter(dict.fromkeys(ids, 1))


async def test_a_sqlalchemy_async_session_writes_a_jsonb_row_on_postgres_that_is_relayed(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    topology = audit_topology(prefix)
    outbox = Outbox(topology, source="shop")
    async with applied(amqp_url, topology), outbox_db("postgresql", tmp_path) as url:
        engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"))
        async with AsyncSession(engine) as session, session.begin():
            first = await outbox.add(session, "order.placed", {"order_id": "o-async", "n": [1]})
        await engine.dispose()
        async with relaying(url, topology, amqp_url):
            await wait_for(lambda: queue_depth(amqp_url, f"{prefix}.audit"), message="the event")
        (m,) = await get_all(amqp_url, f"{prefix}.audit")
    assert m.message_id == first
    assert json.loads(m.body) == {"order_id": "o-async", "n": [1]}, "jsonb round trip"


async def test_the_relay_serves_readiness_and_the_outbox_metrics(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    import httpx

    from demo.stubs import free_port

    topology = audit_topology(prefix)
    port = free_port()
    stop = asyncio.Event()
    # `bus relay` counts in the process's default registry, which earlier relays of this
    # process (e.g. the test above) counted in too: what matters is this relay's one more
    counted_before = _relayed("order.shipped")
    async with applied(amqp_url, topology), outbox_db("sqlite", tmp_path) as url:
        await write("sqlite", url, Outbox(topology), [("order.shipped", {})])
        task = asyncio.create_task(serve(amqp_url, url, topology, metrics_port=port, stop=stop))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

                async def ready() -> bool:
                    try:
                        return (await http.get("/readyz")).status_code == 200
                    except httpx.HTTPError:
                        return False

                await wait_for(ready, message="/readyz 200")
                await wait_for(lambda: queue_depth(amqp_url, f"{prefix}.audit"), message="event")
                # the relay counts once the confirm is in, which may follow the enqueue
                await wait_for(lambda: _relayed("order.shipped") == counted_before + 1,
                               timeout=5, message="the published counter one up")  # fmt: skip
                text = (await http.get("/metrics")).text
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
    # the process-wide registry: earlier relays of this test run may have counted too
    assert re.search(r'bus_relay_published_total\{type="order.shipped"\} [1-9]', text), text
    assert "bus_outbox_pending" in text and "bus_relay_ready" in text


def _relayed(event_type: str) -> float:
    from bus.metrics import Metrics

    value = Metrics.default().registry.get_sample_value(
        "bus_relay_published_total", {"type": event_type}
    )
    return value or 0.0
