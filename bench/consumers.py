"""The two consumers under test: a bus `Runtime`, and the raw aio-pika loop doing the same work.

Both parse the body into the same pydantic model, call the same `on_event`, and ack once per
message at the same prefetch. On a failing `on_event` both hand the message to a retry queue
(publish with confirm and `mandatory`, then ack).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import aiosqlite
from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel

from bus.consume.context import Context
from bus.consume.router import Router
from bus.consume.runtime import Runtime
from bus.stores.base import Store
from bus.topology.model import Topology

OnEvent = Callable[[Any], Awaitable[None]]


def bus_router(pattern: str, model: type[BaseModel], on_event: OnEvent) -> Router:
    """A router with one handler whose first parameter is annotated with *model*."""
    router = Router()

    async def handle(event: Any, ctx: Context) -> None:
        await on_event(event)

    handle.__annotations__ = {"event": model, "ctx": Context, "return": None}
    router.on(pattern, name="bench")(handle)
    return router


@contextlib.asynccontextmanager
async def bus_consuming(
    url: str,
    topo: Topology,
    name: str,
    model: type[BaseModel],
    on_event: OnEvent,
    store: Store,
) -> AsyncIterator[Runtime]:
    rt = Runtime(topo, name, bus_router("#", model, on_event), url=url, store=store)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop(5)


class RawSqlite:
    """What naive code does for idempotency: one `INSERT OR IGNORE` and a commit per message."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        # Without it, concurrent handlers' commits meet each other's open statements ("cannot
        # commit transaction - SQL statements in progress"), the failed message is never acked
        # and the consumer stalls: the memory scenario's raw worker used to hang on exactly that.
        self.lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> RawSqlite:
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("CREATE TABLE IF NOT EXISTS processed (event_id TEXT PRIMARY KEY)")
        await db.commit()
        return cls(db)

    async def first_time(self, event_id: str) -> bool:
        async with self.lock:
            cur = await self.db.execute(
                "INSERT OR IGNORE INTO processed (event_id) VALUES (?)", (event_id,)
            )
            await self.db.commit()
        return cur.rowcount == 1

    async def close(self) -> None:
        await self.db.close()


@contextlib.asynccontextmanager
async def raw_consuming(
    url: str,
    queue: str,
    model: type[BaseModel],
    on_event: OnEvent,
    *,
    prefetch: int,
    store: RawSqlite | None = None,
    retry_queue: str | None = None,
    acked: Callable[[], None] | None = None,
) -> AsyncIterator[None]:
    """Consume *queue* with plain aio-pika: validate, (dedupe), call, ack or hand off."""
    conn = await aio_pika.connect_robust(url)
    try:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=prefetch)
        handoff = await conn.channel(publisher_confirms=True, on_return_raises=True)
        q = await channel.declare_queue(queue, passive=True)

        async def on_message(m: AbstractIncomingMessage) -> None:
            event = model.model_validate_json(m.body)
            if store is not None and not await store.first_time(m.message_id or ""):
                await m.ack()
                return
            try:
                await on_event(event)
            except Exception as exc:
                if retry_queue is None:
                    raise
                headers = dict(m.headers or {})
                headers.update(
                    attempt=2, error=f"{type(exc).__name__}: {exc}", failed_at=time.time()
                )
                copy = aio_pika.Message(
                    m.body,
                    headers=headers,
                    message_id=m.message_id,
                    type=m.type,
                    content_type=m.content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                await handoff.default_exchange.publish(
                    copy, routing_key=retry_queue, mandatory=True
                )
            await m.ack()
            if acked is not None:
                acked()

        tag = await q.consume(on_message)
        yield
        await q.cancel(tag)
    finally:
        await conn.close()
