"""The orders API against real databases (SQLite and PostgreSQL) and the real broker.

Every test gets its own database: a SQLite file under tmp_path, or a fresh PostgreSQL database
`t_<hex>` created on the test server (`BUS_TEST_POSTGRES_URL`, else
postgresql://postgres@127.0.0.1:5432/test) and dropped afterwards. Requests go through
httpx's ASGI transport; one test runs the real server (`python -m api`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import jsonschema
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from api.db import open_engine
from api.orders import create_app
from api.repository import event_id_of
from api.services import Services
from api.settings import ApiSettings
from api.supervisor import Phase
from bus import Context, Outbox, Publisher, Router
from bus.settings import Settings
from bus.topology.model import Topology, load
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology, running

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = ROOT / "topology" / "topology.yaml"
POSTGRES_URL = os.environ.get("BUS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ORDER = {"email": "ada@example.com", "customer": "Ada", "items": [{"sku": "BOOK-1", "quantity": 2}]}


# --- databases, apps, clients -----------------------------------------------------------------


@asynccontextmanager
async def fresh_postgres() -> AsyncIterator[str]:
    """A new, empty database on the test server; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(POSTGRES_URL)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"no PostgreSQL at {POSTGRES_URL} for the API tests: {exc}", pytrace=False)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/orders.db"  # an absolute path: sqlite:////tmp/...
        return
    async with fresh_postgres() as url:
        yield url


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings(database_url: str, **kw: Any) -> ApiSettings:
    bus = Settings(
        url=kw.pop("bus_url", f"amqp://guest:guest@127.0.0.1:{closed_port()}/"),
        topology=str(TOPOLOGY),
        store_url="memory://",
    )
    return ApiSettings(
        database_url=database_url, bus=bus, subscribe=kw.pop("subscribe", False), **kw
    )


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (its lifespan) with a client on it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(create_app(settings(database_url))) as c:
        yield c


def services_of(client: httpx.AsyncClient) -> Services:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    app = transport.app
    assert isinstance(app, FastAPI)
    services: Services = app.state.services
    return services


async def count(client: httpx.AsyncClient, table: str) -> int:
    async with services_of(client).engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def outbox_rows(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    async with services_of(client).engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id, type, data, source, correlation_id FROM bus_outbox ORDER BY seq")
        )
        return [dict(r._mapping) for r in rows]


def as_json(data: Any) -> Any:
    """jsonb comes back decoded from PostgreSQL by asyncpg as text; SQLite keeps text."""
    import json

    return json.loads(data) if isinstance(data, str) else data


# --- POST /orders -----------------------------------------------------------------------------


async def test_post_writes_the_order_and_its_outbox_event(client: httpx.AsyncClient) -> None:
    response = await client.post("/orders", json=ORDER)

    assert response.status_code == 201, response.text
    order_id = response.json()["order_id"]
    assert response.json() == {"order_id": order_id}
    assert response.headers["location"] == f"/orders/{order_id}"
    assert await count(client, "orders") == 1
    assert await count(client, "order_items") == 1
    [row] = await outbox_rows(client)
    assert row["type"] == "order.placed"
    assert row["id"] == event_id_of(order_id)
    assert row["source"] == "orders-api"
    assert row["correlation_id"] == order_id
    data = as_json(row["data"])
    assert data == {
        "order_id": order_id,
        "email": "ada@example.com",
        "customer": "Ada",
        "total": 25.98,
        "items": [{"sku": "BOOK-1", "quantity": 2, "unit_price": 12.99}],
    }
    schema = load(TOPOLOGY).events["order.placed"].json_schema
    jsonschema.validate(data, schema)  # what the relay will publish passes the declared schema


class FailingOutbox(Outbox):
    """Writes the row, then fails: the transaction must take the order down with it."""

    async def add(self, conn: Any, event_type: str, data: Any, **kw: Any) -> str:
        await super().add(conn, event_type, data, **kw)
        raise RuntimeError("injected failure after the outbox row was written")


async def test_a_failing_transaction_leaves_neither_order_nor_event(database_url: str) -> None:
    app = create_app(settings(database_url), outbox=FailingOutbox(load(TOPOLOGY), source="x"))
    async with serving(app) as client:
        response = await client.post("/orders", json=ORDER)

        assert response.status_code == 500
        assert await count(client, "orders") == 0, "the order survived a rolled-back transaction"
        assert await count(client, "order_items") == 0
        assert await count(client, "bus_outbox") == 0, "the event survived its rollback"


async def test_retries_with_one_idempotency_key_make_one_order(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "retry-1"}
    answers = [await client.post("/orders", json=ORDER, headers=headers) for _ in range(3)]

    assert [a.status_code for a in answers] == [201, 201, 201]
    assert len({a.text for a in answers}) == 1, "a retry must get the first answer's body"
    assert "idempotency-replayed" not in answers[0].headers
    assert answers[1].headers["idempotency-replayed"] == "true"
    assert await count(client, "orders") == 1
    assert len(await outbox_rows(client)) == 1, "a retry must not emit a second event"


async def test_ten_concurrent_retries_with_one_key_make_one_order(
    client: httpx.AsyncClient,
) -> None:
    headers = {"Idempotency-Key": "race-1"}
    answers = await asyncio.gather(
        *(client.post("/orders", json=ORDER, headers=headers) for _ in range(10))
    )

    assert [a.status_code for a in answers] == [201] * 10, [a.text for a in answers]
    assert len({a.json()["order_id"] for a in answers}) == 1
    assert await count(client, "orders") == 1
    assert len(await outbox_rows(client)) == 1


async def test_distinct_keys_make_distinct_orders(client: httpx.AsyncClient) -> None:
    first = await client.post("/orders", json=ORDER, headers={"Idempotency-Key": "a"})
    second = await client.post("/orders", json=ORDER, headers={"Idempotency-Key": "b"})
    third = await client.post("/orders", json=ORDER)

    assert len({r.json()["order_id"] for r in (first, second, third)}) == 3
    assert len(await outbox_rows(client)) == 3


async def test_same_key_with_another_body_is_422(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "k-1"}
    assert (await client.post("/orders", json=ORDER, headers=headers)).status_code == 201
    other = {**ORDER, "items": [{"sku": "MUG-1", "quantity": 1}]}

    response = await client.post("/orders", json=other, headers=headers)

    assert response.status_code == 422
    assert "different request body" in response.json()["detail"]
    assert await count(client, "orders") == 1


@pytest.mark.parametrize(
    ("body", "where", "says"),
    [
        ({**ORDER, "items": [{"sku": "NOPE-9", "quantity": 1}]}, "sku", "unknown sku 'NOPE-9'"),
        ({**ORDER, "items": [{"sku": "BOOK-1", "quantity": 0}]}, "quantity", "greater than"),
        ({**ORDER, "items": []}, "items", "at least 1"),
        ({**ORDER, "email": "not-an-email"}, "email", "pattern"),
        ({k: v for k, v in ORDER.items() if k != "customer"}, "customer", "required"),
        ({**ORDER, "price": 0}, "price", "not permitted"),
    ],
    ids=["unknown-sku", "quantity-0", "no-items", "bad-email", "no-customer", "extra-field"],
)
async def test_invalid_orders_are_422_with_the_reason(
    client: httpx.AsyncClient, body: dict[str, Any], where: str, says: str
) -> None:
    response = await client.post("/orders", json=body)

    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"][-1] == where, error
    assert says in error["msg"], error
    assert await count(client, "orders") == 0
    assert await count(client, "bus_outbox") == 0


async def test_an_overlong_idempotency_key_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/orders", json=ORDER, headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 422


# --- GET /orders/{id} -------------------------------------------------------------------------


async def test_get_shows_the_order_placed_then_published(client: httpx.AsyncClient) -> None:
    order_id = (await client.post("/orders", json=ORDER)).json()["order_id"]

    placed = (await client.get(f"/orders/{order_id}")).json()
    assert placed["status"] == "placed"
    assert placed["total"] == 25.98
    assert placed["items"] == [{"sku": "BOOK-1", "quantity": 2, "unit_price": 12.99}]
    assert placed["progress"][0]["at"] == placed["created_at"]

    async with services_of(client).engine.begin() as conn:  # what the relay does once confirmed
        await conn.execute(
            text("DELETE FROM bus_outbox WHERE id = :id"), {"id": event_id_of(order_id)}
        )
    published = (await client.get(f"/orders/{order_id}")).json()
    assert [s["state"] for s in published["progress"]] == ["placed", "published"]
    assert published["status"] == "published"


async def test_get_of_an_unknown_order_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/orders/no-such-order")
    assert response.status_code == 404
    assert "no-such-order" in response.json()["detail"]


async def test_recording_progress_twice_records_it_once(client: httpx.AsyncClient) -> None:
    order_id = (await client.post("/orders", json=ORDER)).json()["order_id"]
    orders = services_of(client).orders
    from datetime import UTC, datetime

    from api.schemas import State

    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert await orders.record(order_id, State.SHIPMENT_REQUESTED, at, event_id="e-1")
    assert await orders.record(
        order_id, State.SHIPMENT_REQUESTED, datetime.now(UTC), event_id="e-2"
    )
    assert not await orders.record("someone-elses", State.SHIPMENT_REQUESTED, at)

    body = (await client.get(f"/orders/{order_id}")).json()
    assert [s["state"] for s in body["progress"]] == ["placed", "published", "shipment_requested"]
    assert body["progress"][-1]["event_id"] == "e-1"
    assert body["progress"][-1]["at"] == "2026-01-02T03:04:05Z"


# --- the embedded subscriber, over the real broker --------------------------------------------


def api_topology(prefix: str) -> Topology:
    return make_topology(
        prefix, {"orders": {"handlers": "api.progress:router", "keys": ["shipment.requested"]}}
    )


async def test_get_shows_the_shipment_requested_over_the_bus(
    amqp_url: str, prefix: str, database_url: str
) -> None:
    async with applied(amqp_url, api_topology(prefix)) as topology:
        app = create_app(
            settings(database_url, bus_url=amqp_url, subscribe=True), topology=topology
        )
        async with serving(app) as client, Publisher(amqp_url, topology, source="test") as pub:
            supervisor = services_of(client).supervisor
            assert supervisor is not None
            await wait_for(lambda: supervisor.ready, message="the orders subscriber consuming")
            order_id = (await client.post("/orders", json=ORDER)).json()["order_id"]

            for event_id in ("ship-1", "ship-1", "ship-2"):  # a redelivery, then a second event
                await pub.publish(
                    "shipment.requested",
                    {"order_id": order_id, "warehouse_ref": "W-7"},
                    id=f"{prefix}-{event_id}",
                    correlation_id=order_id,
                )
            await pub.publish("shipment.requested", {"order_id": "not-ours"}, id=f"{prefix}-x")

            async def shipped() -> Any:
                body = (await client.get(f"/orders/{order_id}")).json()
                return body if body["status"] == "shipment_requested" else None

            body = await wait_for(shipped, message="the order's shipment_requested progress")
            assert [s["state"] for s in body["progress"]] == [
                "placed",
                "published",
                "shipment_requested",
            ]
            step = body["progress"][-1]
            assert step["event_id"] == f"{prefix}-ship-1"
            assert step["detail"] == "warehouse ref W-7"
            assert step["at"] >= body["created_at"]

            metrics = (await client.get("/metrics")).text
            assert 'bus_ready{subscriber="orders"} 1.0' in metrics
            assert (
                'api_request_seconds_count{method="POST",route="/orders",status="201"}' in metrics
            )


async def test_the_api_takes_orders_while_the_broker_is_unreachable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="api.supervisor")
    app = create_app(settings(f"sqlite:///{tmp_path}/o.db", subscribe=True))
    async with serving(app) as client:
        supervisor = services_of(client).supervisor
        assert supervisor is not None

        answers = [await client.post("/orders", json=ORDER) for _ in range(5)]
        await wait_for(lambda: supervisor.attempts >= 3, message="three start attempts")

        assert [a.status_code for a in answers] == [201] * 5
        assert len(await outbox_rows(client)) == 5, "the events wait in the outbox"
        assert supervisor.phase is Phase.RETRYING
        assert "connection refused" in supervisor.detail
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["subscriber"] == "retrying"
        assert (await client.get("/healthz")).status_code == 200
    warnings = [r for r in caplog.records if "not consuming" in r.getMessage()]
    assert len(warnings) == 1, "one log line per state change, not one per attempt"


async def test_the_subscriber_starts_once_its_queue_exists(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topology = api_topology(prefix)  # not applied yet: the queue is missing
    app = create_app(
        settings(f"sqlite:///{tmp_path}/o.db", bus_url=amqp_url, subscribe=True), topology=topology
    )
    async with serving(app) as client:
        supervisor = services_of(client).supervisor
        assert supervisor is not None
        await wait_for(lambda: supervisor.phase is Phase.RETRYING, message="a failed start")
        assert "does not exist" in supervisor.detail
        assert (await client.post("/orders", json=ORDER)).status_code == 201
        async with applied(amqp_url, topology):
            await wait_for(lambda: supervisor.ready, timeout=15, message="consuming once applied")


async def test_healthz_and_readyz_fail_while_the_database_is_away(tmp_path: Path) -> None:
    async with serving(create_app(settings(f"sqlite:///{tmp_path}/o.db"))) as client:
        assert (await client.get("/healthz")).status_code == 200
        services = services_of(client)
        own = services.engine
        gone = open_engine(f"postgresql://nobody@127.0.0.1:{closed_port()}/gone")
        services.engine = services.orders.engine = gone
        try:
            assert (await client.get("/healthz")).status_code == 503
            assert (await client.get("/readyz")).json()["database"] == "down"
            refused = await client.post("/orders", json=ORDER)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
        finally:
            await gone.dispose()
            services.engine = services.orders.engine = own


# --- the real server --------------------------------------------------------------------------


def free_port() -> int:
    return closed_port()


async def test_python_m_api_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "BUS_OUTBOX_URL": f"sqlite:///{tmp_path}/o.db",
        "BUS_URL": f"amqp://guest:guest@127.0.0.1:{closed_port()}/",
        "BUS_TOPOLOGY": str(TOPOLOGY),
        "BUS_STORE_URL": "memory://",
        "API_PORT": str(port),
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "api", "--host", "127.0.0.1"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def up() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get("/healthz")).status_code == 200
                return False

            await wait_for(up, timeout=20, interval=0.1, message="python -m api answering")
            response = await http.post("/orders", json=ORDER, headers={"Idempotency-Key": "s1"})
            assert response.status_code == 201, response.text
            order = await http.get(response.headers["location"])
            assert order.json()["status"] == "placed"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out.decode()
        log = out.decode()
        assert "not consuming" in log and "guest:***@" in log, log  # password redacted
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the whole loop: API -> outbox -> relay -> fulfillment -> bus -> API ------------------------


async def test_the_loop_closes_through_the_relay_and_fulfillment(
    amqp_url: str, prefix: str, database_url: str
) -> None:
    from bus.outbox.relay import serve as relay

    topology = make_topology(
        prefix,
        {
            "orders": {"handlers": "api.progress:router", "keys": ["shipment.requested"]},
            "fulfillment": {"keys": ["order.placed"]},
        },
    )
    seen: list[tuple[str, str, str]] = []
    fulfillment = Router()

    @fulfillment.on("order.placed")
    async def ship(event: dict[str, Any], ctx: Context) -> None:
        seen.append((event["order_id"], ctx.correlation_id, ctx.source))
        await ctx.publish(
            "shipment.requested", {"order_id": event["order_id"], "warehouse_ref": "W-1"}
        )

    app = create_app(settings(database_url, bus_url=amqp_url, subscribe=True), topology=topology)
    async with (
        applied(amqp_url, topology),
        serving(app) as client,
        running(amqp_url, topology, "fulfillment", fulfillment),
    ):
        stop = asyncio.Event()
        relaying = asyncio.create_task(relay(amqp_url, database_url, topology, stop=stop))
        try:
            ids = [(await client.post("/orders", json=ORDER)).json()["order_id"] for _ in range(3)]

            async def all_shipped() -> bool:
                bodies = [(await client.get(f"/orders/{i}")).json() for i in ids]
                return all(b["status"] == "shipment_requested" for b in bodies)

            await wait_for(all_shipped, timeout=20, message="three orders around the loop")
        finally:
            stop.set()
            await asyncio.wait_for(relaying, 10)
        assert sorted(seen) == sorted((i, i, "orders-api") for i in ids), "each order once"
        assert await count(client, "bus_outbox") == 0, "the relay removed what it published"
