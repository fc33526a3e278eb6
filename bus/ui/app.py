"""The ASGI app of `bus ui`: pages, their fragments, the JSON API, static files."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiormq
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from bus.errors import BrokerUnavailable, BusError, DatabaseUnavailable
from bus.topology.model import Topology
from bus.topology.model import load as load_topology
from bus.ui import api, pages, sagas
from bus.ui import history as history_api
from bus.ui.backend import Backend, NotFound
from bus.ui.config import UiConfig

log = logging.getLogger(__name__)
HERE = Path(__file__).parent


def broker_label(url: str) -> str:
    """The broker's hosts and vhost, for the page: never the user or password."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{hosts}{parts.path or '/'}"


def age(seconds: float) -> str:
    """`42s`, `5m 03s`, `2h 10m`, `3d 4h`: how long ago, for people."""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def when(stamp: str | None) -> str:
    """An RFC 3339 instant to the second, for tables (`2026-12-01 07:34:21Z`)."""
    if not stamp:
        return "-"
    day, sep, clock = stamp.partition("T")
    if not sep:
        return stamp
    zone = "Z" if clock.endswith("Z") else ""
    return f"{day} {clock[:8]}{zone}"


def create_app(config: UiConfig, topology: Topology | None = None) -> FastAPI:
    """The app for *config* (the topology is loaded from its settings unless given)."""
    topo = topology if topology is not None else load_topology(config.settings.topology)
    backend = Backend(config, topo)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await backend.close()

    app = FastAPI(title="bus ui", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.config = config
    app.state.backend = backend
    app.state.broker_label = broker_label(config.settings.url)
    app.state.templates = templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["age"] = age
    templates.env.filters["when"] = when
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api.router)
    app.include_router(history_api.router)
    app.include_router(sagas.router)
    app.include_router(pages.router)
    app.add_exception_handler(BusError, _bus_error)
    app.add_exception_handler(HTTPException, _http_error)
    for kind in (aiormq.exceptions.AMQPError, ConnectionError):
        app.add_exception_handler(kind, _broker_error)
    return app


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _error(request: Request, status: int, detail: object) -> Response:
    if _wants_json(request):
        return JSONResponse({"detail": detail}, status_code=status)
    return pages.render(request, "error.html", status, status=status, detail=detail)


async def _bus_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BusError)
    status = (
        404
        if isinstance(exc, NotFound)
        else 503
        if isinstance(exc, BrokerUnavailable | DatabaseUnavailable)
        else 400
    )
    return _error(request, status, str(exc))  # our messages redact URLs


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = _error(request, exc.status_code, exc.detail)
    response.headers.update(exc.headers or {})
    return response


async def _broker_error(request: Request, exc: Exception) -> Response:
    backend: Backend = request.app.state.backend
    await backend.close()  # the next request connects afresh
    log.warning("ui: broker error on %s: %s", request.url.path, type(exc).__name__)
    return _error(request, 503, f"the broker connection failed ({type(exc).__name__}); retry")
