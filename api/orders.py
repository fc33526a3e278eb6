"""The orders API (FastAPI): `uvicorn api.orders:app`, or `python -m api`.

POST /orders          201 {"order_id"} + Location; the order and its order.placed event in one
                      transaction; `Idempotency-Key` makes a retry return the same order
GET  /orders/{id}     the order and its progress: placed → published → shipment_requested
GET  /healthz         200 while the database answers
GET  /readyz          200 once started and the database answers (the broker is not needed)
GET  /metrics         Prometheus: api_* and the embedded subscriber's bus_* metrics

Importing this module reads no environment and opens nothing: `create_app()` reads the settings
(`ApiSettings.from_env()`) when the server starts it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy.exc import DBAPIError, IntegrityError

from api.db import ping
from api.metrics import ApiMetrics, LatencyMiddleware
from api.repository import KeyReused
from api.schemas import IDEMPOTENCY_KEY_MAX, OrderCreated, OrderIn, OrderOut
from api.services import Services
from api.settings import ApiSettings
from bus.outbox import Outbox
from bus.topology.model import Topology

log = logging.getLogger(__name__)

PING_TIMEOUT = 2.0
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=IDEMPOTENCY_KEY_MAX,
           description="The same key and body on a retry return the same order"),
]  # fmt: skip


def create_app(
    settings: ApiSettings | None = None,
    *,
    topology: Topology | None = None,
    outbox: Outbox | None = None,
    metrics: ApiMetrics | None = None,
) -> FastAPI:
    """The API. *settings* default to the environment, read at start-up; *topology* to the
    file of `BUS_TOPOLOGY`; *outbox* to one over that topology (source `orders-api`)."""
    api_metrics = metrics or ApiMetrics.default()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await Services.start(
            settings or ApiSettings.from_env(), topology=topology, outbox=outbox
        )
        app.state.services = services
        if services.settings.gc_freeze:  # as `bus run`: no full collection walks start-up objects
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(title="orders API", summary="An example producer on the bus", lifespan=lifespan)
    app.add_middleware(LatencyMiddleware, metrics=api_metrics)
    app.add_exception_handler(KeyReused, _key_reused)
    app.add_exception_handler(DBAPIError, _database_down)
    app.add_exception_handler(OSError, _database_down)

    @app.post("/orders", status_code=201, response_model=OrderCreated)
    async def place_order(
        order: OrderIn, request: Request, response: Response, key: IdempotencyKey = None
    ) -> OrderCreated:
        """Store the order and its `order.placed` event together; never touches the broker."""
        placed = await _services(request).orders.place(order, key)
        response.headers["Location"] = f"/orders/{placed.order_id}"
        if placed.replayed:
            response.headers["Idempotency-Replayed"] = "true"
        api_metrics.orders.labels("replayed" if placed.replayed else "created").inc()
        return OrderCreated(order_id=placed.order_id)

    @app.get("/orders/{order_id}", response_model=OrderOut)
    async def get_order(order_id: str, request: Request) -> OrderOut:
        """The order and each state it reached."""
        found = await _services(request).orders.get(order_id)
        if found is None:
            raise HTTPException(404, f"no order {order_id!r}")
        return found

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        """Alive while the database answers."""
        ok = await _database_answers(request)
        return JSONResponse({"database": "ok" if ok else "down"}, 200 if ok else 503)

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Ready to take orders: the database answers. The subscriber's state is informative
        only: orders must keep coming in while the broker is away."""
        ok = await _database_answers(request)
        supervisor = _services(request).supervisor
        body = {
            "database": "ok" if ok else "down",
            "subscriber": supervisor.phase.value if supervisor else "disabled",
        }
        if supervisor is not None and supervisor.detail:
            body["subscriber_detail"] = supervisor.detail
        return JSONResponse(body, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics_page() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _database_answers(request: Request) -> bool:
    try:
        await asyncio.wait_for(ping(_services(request).engine), PING_TIMEOUT)
    except Exception as exc:
        log.warning("database does not answer: %s", type(exc).__name__)
        return False
    return True


async def _key_reused(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, 422)


async def _database_down(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, IntegrityError):  # a bug, not an outage
        raise exc
    log.error("database error: %s", type(exc).__name__)
    return JSONResponse({"detail": "the database is unavailable; retry later"}, 503,
                        headers={"Retry-After": "1"})  # fmt: skip


app = create_app()
