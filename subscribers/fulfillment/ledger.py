"""What fulfillment saw of each order, in order: one row per event it handled.

`FULFILLMENT_DB_URL` (`sqlite:///.bus/fulfillment.db` by default). A row per event id, so a
redelivery adds nothing. `overtaken` counts events that came before an earlier event of their
order: an `order.cancelled` handled before its `order.placed`, or an `order.placed` after its
cancellation. The subscriber is `ordered: true` by `order_id`, so it stays at zero.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
from prometheus_client import REGISTRY, Counter

SCHEMA = """CREATE TABLE IF NOT EXISTS fulfillment_seen (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
    order_id TEXT NOT NULL, event_type TEXT NOT NULL, attempt INTEGER NOT NULL,
    overtook INTEGER NOT NULL, at TEXT NOT NULL)"""
SEEN = "SELECT 1 FROM fulfillment_seen WHERE order_id = ? AND event_type = ? LIMIT 1"
ADD = """INSERT INTO fulfillment_seen (event_id, order_id, event_type, attempt, overtook, at)
VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"""
HISTORY = "SELECT order_id, event_type, attempt, overtook FROM fulfillment_seen ORDER BY seq"


def _overtaken_counter() -> Counter:
    name = "fulfillment_overtaken"
    existing = REGISTRY._names_to_collectors.get(name)  # imported twice (tests): the same one
    if isinstance(existing, Counter):
        return existing
    return Counter(
        name, "Events handled before an earlier event of their order (cancelled before placed)"
    )


OVERTAKEN = _overtaken_counter()


@dataclass(frozen=True)
class Seen:
    order_id: str
    event_type: str
    attempt: int
    overtook: bool


class Ledger:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self.lock = asyncio.Lock()  # one connection for every concurrent handler

    @classmethod
    async def open(cls, path: str) -> Ledger:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, timeout=30)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(SCHEMA)
        await db.commit()
        return cls(db)

    async def seen(self, order_id: str, event_type: str) -> bool:
        async with self.lock, self.db.execute(SEEN, (order_id, event_type)) as cur:
            return await cur.fetchone() is not None

    async def record(
        self, event_id: str, order_id: str, event_type: str, attempt: int, *, overtook: bool
    ) -> None:
        at = datetime.now(UTC).isoformat()
        async with self.lock:
            cur = await self.db.execute(
                ADD, (event_id, order_id, event_type, attempt, int(overtook), at)
            )
            await self.db.commit()
        if overtook and cur.rowcount:
            OVERTAKEN.inc()

    async def history(self) -> list[Seen]:
        async with self.lock, self.db.execute(HISTORY) as cur:
            return [Seen(str(o), str(t), int(a), bool(x)) for o, t, a, x in await cur.fetchall()]

    async def close(self) -> None:
        async with self.lock:
            await self.db.close()


def path_of(url: str) -> str:
    if not url.startswith("sqlite:///"):
        raise ValueError(f"FULFILLMENT_DB_URL must be sqlite:///…, got {url}")
    return url.removeprefix("sqlite:///")


_open: dict[str, Ledger] = {}
_lock = asyncio.Lock()


async def ledger() -> Ledger:
    """The ledger of this process, opened on first use (keyed by URL, so tests may switch)."""
    url = os.environ.get("FULFILLMENT_DB_URL", "sqlite:///.bus/fulfillment.db")
    async with _lock:
        if url not in _open:
            _open[url] = await Ledger.open(path_of(url))
        return _open[url]


async def close_all() -> None:
    while _open:
        _, db = _open.popitem()
        await db.close()
