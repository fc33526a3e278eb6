"""A subscriber with three parked messages of two exception types, and `bus ui` over it."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from bus.consume.runtime import Runtime
from bus.produce.publisher import Publisher
from bus.settings import Settings
from bus.topology.model import Topology
from bus.ui import UiConfig, create_app
from demo.stubs import free_port
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology, queue_depth, running
from tests.ui_handlers import HANDLERS, Mailer

TOKEN = "ui-test-token"
SUBS = {"email": {"keys": ["order.placed"], "handlers": HANDLERS}}


@dataclass
class Parked:
    topology: Topology
    mailer: Mailer
    runtime: Runtime
    dlq: str

    def app(self, url: str, tmp: Path, token: str | None = TOKEN) -> FastAPI:
        settings = Settings(url=url, outbox_url=f"sqlite:///{tmp / 'no-outbox.db'}")
        return create_app(UiConfig(settings, token=token, browse_ttl=0.2), self.topology)


@contextlib.asynccontextmanager
async def three_parked(url: str, prefix: str) -> AsyncIterator[Parked]:
    """e-1, e-2 parked by TimeoutError (retries exhausted), e-3 by its model (no email)."""
    topology = make_topology(prefix, SUBS, delays=["100ms"])
    mailer = Mailer()
    dlq = f"{prefix}.email.dlq"
    async with applied(url, topology), running(url, topology, "email", mailer.router) as rt:
        async with Publisher(url, topology) as pub:
            for i in (1, 2):
                data = {"order_id": f"o-{i}", "email": f"c{i}@example.com"}
                await pub.publish("order.placed", data, id=f"e-{i}")
            await pub.publish("order.placed", {"order_id": "o-3"}, id="e-3")

        async def three() -> bool:
            return await queue_depth(url, dlq) == 3

        await wait_for(three, timeout=15, message=f"3 parked messages in {dlq}")
        yield Parked(topology, mailer, rt, dlq)


@contextlib.asynccontextmanager
async def ui_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """httpx over ASGI, which runs no lifespan: close the app's backend (its broker connection
    and outbox store, whose aiosqlite thread would keep the interpreter from exiting)."""
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c
    finally:
        await app.state.backend.close()


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """*app* on a real port of this event loop (for the browser); yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, timeout=10, message="bus ui listening")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def login(c: httpx.AsyncClient, name: str = "ada") -> str:
    """Log in with the token; returns the CSRF token the pages carry."""
    r = await c.post("/login", data={"token": TOKEN, "name": name})
    assert r.status_code == 303, r.text
    page = await c.get("/")
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found, "a logged-in page carries a CSRF token"
    return found.group(1)
