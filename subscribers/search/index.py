"""A small index of orders in SQLite (`SEARCH_DB_URL`, `sqlite:///.bus/search.db` by default).

One row per order, written by `order.placed` and `order.cancelled` in either order: placing
fills in the order and keeps a cancellation already recorded, cancelling marks it. `via` says
whether the order first came from history (a backfill or replay copy) or live.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiosqlite

SCHEMA = """CREATE TABLE IF NOT EXISTS search_orders (
    order_id TEXT PRIMARY KEY, customer TEXT NOT NULL DEFAULT '', email TEXT NOT NULL DEFAULT '',
    total REAL, status TEXT NOT NULL, via TEXT NOT NULL)"""
PLACED = """INSERT INTO search_orders (order_id, customer, email, total, status, via)
VALUES (?, ?, ?, ?, 'placed', ?) ON CONFLICT (order_id) DO UPDATE SET
customer = excluded.customer, email = excluded.email, total = excluded.total"""
CANCELLED = """INSERT INTO search_orders (order_id, status, via) VALUES (?, 'cancelled', ?)
ON CONFLICT (order_id) DO UPDATE SET status = 'cancelled'"""
FIND = """SELECT order_id, customer, email, total, status FROM search_orders
WHERE customer LIKE ? OR email LIKE ? OR order_id LIKE ? ORDER BY order_id LIMIT ?"""


class Index:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self.lock = asyncio.Lock()  # one connection for every concurrent handler

    @classmethod
    async def open(cls, path: str) -> Index:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, timeout=30)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(SCHEMA)
        await db.commit()
        return cls(db)

    async def placed(
        self, order_id: str, customer: str, email: str, total: float | None, via: str
    ) -> None:
        async with self.lock:
            await self.db.execute(PLACED, (order_id, customer, email, total, via))
            await self.db.commit()

    async def cancelled(self, order_id: str, via: str) -> None:
        async with self.lock:
            await self.db.execute(CANCELLED, (order_id, via))
            await self.db.commit()

    async def find(self, text: str, limit: int = 20) -> list[tuple[str, str, str, float, str]]:
        like = f"%{text}%"
        async with self.lock, self.db.execute(FIND, (like, like, like, limit)) as cur:
            return [(str(a), str(b), str(c), float(d or 0), str(e)) for a, b, c, d, e in
                    await cur.fetchall()]  # fmt: skip

    async def close(self) -> None:
        async with self.lock:
            await self.db.close()


_open: dict[str, Index] = {}
_lock = asyncio.Lock()


async def index() -> Index:
    """The index of this process, opened on first use (keyed by URL, so tests may switch)."""
    url = os.environ.get("SEARCH_DB_URL", "sqlite:///.bus/search.db")
    if not url.startswith("sqlite:///"):
        raise ValueError(f"SEARCH_DB_URL must be sqlite:///…, got {url}")
    async with _lock:
        if url not in _open:
            _open[url] = await Index.open(url.removeprefix("sqlite:///"))
        return _open[url]


async def close_all() -> None:
    while _open:
        _, db = _open.popitem()
        await db.close()
