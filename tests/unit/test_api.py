"""The orders API's pure parts: settings, catalogue, request shapes, the event it writes,
the subscriber's backoff and supervision, the latency middleware. No network, no database."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, cast

import httpx
import jsonschema
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from api.catalogue import CATALOGUE, UnknownSku, as_amount, price, total_cents
from api.metrics import UNMATCHED, ApiMetrics, LatencyMiddleware
from api.progress import ShipmentRequested, make_router
from api.repository import event_id_of, order_placed
from api.schemas import OrderIn
from api.settings import ApiSettings, sqlalchemy_url, sqlite_path
from api.supervisor import Phase, Supervisor, backoff, reason
from bus import Outbox
from bus.consume.runtime import Runtime
from bus.consume.service import import_router
from bus.errors import BrokerUnavailable, ConfigError
from bus.topology.model import load

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = ROOT / "topology" / "topology.yaml"
ORDER = {"email": "ada@example.com", "customer": "Ada", "items": [{"sku": "BOOK-1", "quantity": 2}]}


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@db:5432/shop", "postgresql+asyncpg://u:p@db:5432/shop"),
        ("postgres://db/shop", "postgresql+asyncpg://db/shop"),
        ("postgresql+asyncpg://db/shop", "postgresql+asyncpg://db/shop"),
        ("sqlite:///.bus/outbox.db", "sqlite+aiosqlite:///.bus/outbox.db"),
        ("sqlite:////var/lib/shop.db", "sqlite+aiosqlite:////var/lib/shop.db"),
    ],
)
def test_database_urls_map_to_the_async_drivers(url: str, expected: str) -> None:
    assert sqlalchemy_url(url) == expected


def test_unsupported_database_urls_are_refused_with_the_password_redacted() -> None:
    with pytest.raises(ConfigError, match=r"mysql://u:\*\*\*@db/shop") as info:
        sqlalchemy_url("mysql://u:secret@db/shop")
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigError, match="sqlite needs a path"):
        sqlalchemy_url("sqlite:///")


def test_sqlite_paths_are_relative_or_absolute() -> None:
    assert sqlite_path("sqlite:///.bus/outbox.db") == ".bus/outbox.db"
    assert sqlite_path("sqlite:////tmp/o.db") == "/tmp/o.db"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_OUTBOX_URL", "postgresql://db/shop")
    monkeypatch.setenv("API_PORT", "8123")
    monkeypatch.setenv("BUS_URL", "amqp://guest:guest@rabbit:5672/")
    monkeypatch.setenv("API_SUBSCRIBE", "0")

    s = ApiSettings.from_env(host="0.0.0.0")

    assert (s.database_url, s.port, s.host, s.subscribe) == (
        "postgresql://db/shop",
        8123,
        "0.0.0.0",
        False,
    )
    assert s.bus.url == "amqp://guest:guest@rabbit:5672/"


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BUS_OUTBOX_URL", "API_PORT", "API_HOST", "API_SUBSCRIBE", "API_GC_FREEZE"):
        monkeypatch.delenv(name, raising=False)
    s = ApiSettings.from_env()
    assert (s.database_url, s.port, s.host) == ("sqlite:///.bus/outbox.db", 8000, "127.0.0.1")
    assert s.subscribe and not s.gc_freeze


# --- catalogue and request shapes -------------------------------------------------------------


def test_an_order_is_priced_from_the_catalogue_in_cents() -> None:
    lines = price([("BOOK-1", 2), ("STICKER", 3)])
    assert total_cents(lines) == 2 * CATALOGUE["BOOK-1"] + 3 * CATALOGUE["STICKER"]
    assert as_amount(total_cents(lines)) == 30.48


def test_unknown_skus_are_all_named() -> None:
    with pytest.raises(UnknownSku) as info:
        price([("NOPE", 1), ("BOOK-1", 1), ("ALSO-NOPE", 2)])
    assert info.value.skus == ["ALSO-NOPE", "NOPE"]
    assert "the catalogue sells" in str(info.value)


def test_the_request_fingerprint_ignores_key_order_and_padding_only() -> None:
    a = OrderIn.model_validate(ORDER)
    b = OrderIn.model_validate({"items": [{"quantity": 2, "sku": " BOOK-1 "}], "customer": "Ada ",
                                "email": "ada@example.com"})  # fmt: skip
    c = OrderIn.model_validate({**ORDER, "items": [{"sku": "BOOK-1", "quantity": 3}]})
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


def test_an_unknown_sku_fails_validation_where_it_is() -> None:
    with pytest.raises(ValidationError) as info:
        OrderIn.model_validate({**ORDER, "items": [{"sku": "BOOK-1", "quantity": 1},
                                                   {"sku": "NOPE", "quantity": 1}]})  # fmt: skip
    [error] = info.value.errors()
    assert error["loc"] == ("items", 1, "sku")
    assert "unknown sku 'NOPE'" in error["msg"]


# --- the event --------------------------------------------------------------------------------


def test_the_order_placed_event_passes_the_topology_and_its_schema() -> None:
    order = OrderIn.model_validate(ORDER)
    data = order_placed("o-1", order, price([("BOOK-1", 2)]))

    event = Outbox(load(TOPOLOGY), source="orders-api").event("order.placed", data)  # checks it

    jsonschema.validate(event.data, load(TOPOLOGY).events["order.placed"].json_schema)
    assert data["total"] == 25.98 and data["items"] == [
        {"sku": "BOOK-1", "quantity": 2, "unit_price": 12.99}
    ]


def test_the_event_id_is_derived_from_the_order_id() -> None:
    assert event_id_of("o-1") == event_id_of("o-1") != event_id_of("o-2")


def test_the_topology_declares_the_orders_subscriber_with_its_router() -> None:
    sub = load(TOPOLOGY).subscriber("orders")
    assert sub.handlers == "api.progress:router"
    router = import_router(sub.handlers)
    handler = router.match("shipment.requested")
    assert handler is not None
    parsed = handler.parse_data({"order_id": "o-1", "warehouse_ref": "W-1"})
    assert parsed == ShipmentRequested(order_id="o-1", warehouse_ref="W-1")


def test_make_router_handles_only_shipment_requested() -> None:
    async def nothing() -> Any:
        raise AssertionError("not called")

    router = make_router(nothing)
    assert router.match("shipment.requested") is not None
    assert router.match("order.placed") is None


# --- backoff and supervision ------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    full = [backoff(n, first=0.5, cap=30, jitter=lambda: 1.0) for n in range(1, 10)]
    assert full == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff(3, first=0.5, cap=30, jitter=lambda: 0.0) == 1.0  # half, at least


def test_reason_is_one_line() -> None:
    assert reason(BrokerUnavailable("cannot reach RabbitMQ\nmore")) == "cannot reach RabbitMQ"
    assert reason(OSError("refused")) == "OSError: refused"
    assert reason(TimeoutError()) == "TimeoutError"


class FakeRuntime:
    """Fails its first starts, then consumes; records stops."""

    def __init__(self, fail: BaseException | None) -> None:
        self.fail = fail
        self.ready = False
        self.stops: list[float] = []

    async def start(self) -> None:
        if self.fail is not None:
            raise self.fail
        self.ready = True

    async def stop(self, grace: float = 30.0) -> bool:
        self.stops.append(grace)
        self.ready = False
        return True


async def test_the_supervisor_retries_until_consuming_and_logs_each_change_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="api.supervisor")
    failures: list[BaseException] = [BrokerUnavailable("down")] * 3 + [ConfigError("no queue")]
    made: list[FakeRuntime] = []

    async def make() -> Runtime:
        made.append(FakeRuntime(failures.pop(0) if failures else None))
        return cast(Runtime, made[-1])

    sup = Supervisor(make, first_delay=0.001, max_delay=0.002, watch_interval=0.005)
    sup.start()
    for _ in range(500):
        if sup.ready:
            break
        await asyncio.sleep(0.005)
    assert sup.ready and sup.phase is Phase.CONSUMING and sup.attempts == 5
    assert [r.stops for r in made[:4]] == [[1.0]] * 4, "each failed start is cleaned up"

    made[-1].ready = False  # the connection dropped: the robust connection restores it
    await asyncio.sleep(0.03)
    assert sup.phase is Phase.DISCONNECTED
    made[-1].ready = True
    await asyncio.sleep(0.03)
    await sup.stop(7.0)

    assert made[-1].stops == [7.0]
    lines = [r.getMessage() for r in caplog.records]
    assert sum("not consuming: down" in line for line in lines) == 1, lines
    assert sum("not consuming: no queue" in line for line in lines) == 1, lines
    assert sum(line.endswith("consuming") for line in lines) == 2, lines
    assert lines[-1] == "subscriber orders stopped"


async def test_stopping_a_supervisor_that_never_started_a_runtime() -> None:
    async def make() -> Runtime:
        raise BrokerUnavailable("down")

    sup = Supervisor(make, first_delay=10, max_delay=10)
    sup.start()
    await asyncio.sleep(0.01)
    await sup.stop(1.0)
    assert sup.phase is Phase.STOPPED and sup.runtime is None


# --- the latency histogram --------------------------------------------------------------------


async def test_latency_is_labelled_by_route_template() -> None:
    metrics = ApiMetrics(CollectorRegistry())
    app = FastAPI()
    app.add_middleware(LatencyMiddleware, metrics=metrics)

    @app.get("/orders/{order_id}")
    async def get(order_id: str) -> dict[str, str]:
        return {"order_id": order_id}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/orders/a")
        await client.get("/orders/b")
        await client.get("/nowhere")

    def observed(route: str, status: str) -> float | None:
        return metrics.registry.get_sample_value(
            "api_request_seconds_count", {"method": "GET", "route": route, "status": status}
        )

    assert observed("/orders/{order_id}", "200") == 2
    assert observed(UNMATCHED, "404") == 1
