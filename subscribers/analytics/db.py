"""Event counts per type and hour, in SQLite (a file) or PostgreSQL, chosen by URL.

Counting is exactly-once on its own: the event id goes into `analytics_seen` in the same
transaction that bumps the count, so a redelivered event never counts twice. `record_many`
does a whole batch in one transaction: on PostgreSQL two statements (`unnest` arrays) for any
number of events.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import asyncpg

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS analytics_seen (event_id TEXT PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS analytics_counts (
        event_type TEXT NOT NULL, hour TEXT NOT NULL, count BIGINT NOT NULL,
        PRIMARY KEY (event_type, hour))""",
    """CREATE TABLE IF NOT EXISTS analytics_reports (
        day TEXT PRIMARY KEY, events BIGINT NOT NULL, created_at TEXT NOT NULL)""",
]
SEEN = (
    "INSERT INTO analytics_seen (event_id) VALUES ({0}) ON CONFLICT DO NOTHING RETURNING event_id"
)
BUMP = """INSERT INTO analytics_counts (event_type, hour, count) VALUES ({0}, {1}, 1)
ON CONFLICT (event_type, hour) DO UPDATE SET count = analytics_counts.count + 1"""
BUMP_BY = """INSERT INTO analytics_counts (event_type, hour, count) VALUES ({0}, {1}, {2})
ON CONFLICT (event_type, hour) DO UPDATE SET count = analytics_counts.count + excluded.count"""
SEEN_MANY = """INSERT INTO analytics_seen (event_id) SELECT unnest($1::text[])
ON CONFLICT DO NOTHING RETURNING event_id"""
BUMP_MANY = """INSERT INTO analytics_counts (event_type, hour, count)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
ON CONFLICT (event_type, hour) DO UPDATE SET count = analytics_counts.count + excluded.count"""
TOTALS = "SELECT event_type, hour, count FROM analytics_counts ORDER BY hour, event_type"
DAY_TOTAL = "SELECT COALESCE(SUM(count), 0) FROM analytics_counts WHERE hour LIKE {0}"
REPORT = """INSERT INTO analytics_reports (day, events, created_at) VALUES ({0}, {1}, {2})
ON CONFLICT (day) DO UPDATE SET events = excluded.events, created_at = excluded.created_at"""


def hour_of(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:00Z")


def _per_hour(events: list[Seen]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for _, event_type, when in events:
        key = (event_type, hour_of(when))
        out[key] = out.get(key, 0) + 1
    return out


Seen = tuple[str, str, datetime]  # event id, event type, when


class Counts(Protocol):
    async def record(self, event_id: str, event_type: str, when: datetime) -> bool: ...
    async def record_many(self, events: list[Seen]) -> int: ...
    async def totals(self) -> list[tuple[str, str, int]]: ...
    async def write_report(self, day: str, now: datetime) -> int: ...
    async def close(self) -> None: ...


class SqliteCounts:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        # one connection for every concurrent handler: each call's statements and commit take
        # one turn, or a commit meets another handler's open statement
        self.lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> SqliteCounts:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, timeout=30)
        await db.execute("PRAGMA journal_mode=WAL")
        for stmt in SCHEMA:
            await db.execute(stmt)
        await db.commit()
        return cls(db)

    async def record(self, event_id: str, event_type: str, when: datetime) -> bool:
        async with self.lock:
            async with self.db.execute(SEEN.format("?"), (event_id,)) as cur:
                fresh = await cur.fetchone() is not None
            if fresh:
                await self.db.execute(BUMP.format("?", "?"), (event_type, hour_of(when)))
            await self.db.commit()
        return fresh

    async def record_many(self, events: list[Seen]) -> int:
        """Count a batch in one transaction; returns how many were new."""
        async with self.lock:
            fresh: list[Seen] = []
            for e in events:
                async with self.db.execute(SEEN.format("?"), (e[0],)) as cur:
                    if await cur.fetchone() is not None:
                        fresh.append(e)
            bumps = _per_hour(fresh)
            await self.db.executemany(
                BUMP_BY.format("?", "?", "?"), [(t, h, n) for (t, h), n in bumps.items()]
            )
            await self.db.commit()
        return len(fresh)

    async def totals(self) -> list[tuple[str, str, int]]:
        async with self.db.execute(TOTALS) as cur:
            return [(str(a), str(b), int(c)) for a, b, c in await cur.fetchall()]

    async def write_report(self, day: str, now: datetime) -> int:
        async with self.lock:
            async with self.db.execute(DAY_TOTAL.format("?"), (f"{day}%",)) as cur:
                row = await cur.fetchone()
            total = int(row[0]) if row else 0
            await self.db.execute(REPORT.format("?", "?", "?"), (day, total, now.isoformat()))
            await self.db.commit()
        return total

    async def close(self) -> None:
        async with self.lock:
            await self.db.close()


class PostgresCounts:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, url: str) -> PostgresCounts:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=5)
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(8165)")
            try:
                for stmt in SCHEMA:
                    await conn.execute(stmt)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(8165)")
        return cls(pool)

    async def record(self, event_id: str, event_type: str, when: datetime) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = await conn.fetchval(SEEN.format("$1"), event_id) is not None
            if fresh:
                await conn.execute(BUMP.format("$1", "$2"), event_type, hour_of(when))
        return fresh

    async def record_many(self, events: list[Seen]) -> int:
        """Count a batch in one transaction, two statements; returns how many were new."""
        if not events:
            return 0
        by_id = {e[0]: e for e in events}
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(SEEN_MANY, list(by_id))
            fresh = [by_id[r[0]] for r in rows]
            bumps = _per_hour(fresh)
            if bumps:
                types, hours, counts = zip(*((t, h, n) for (t, h), n in bumps.items()), strict=True)
                await conn.execute(BUMP_MANY, list(types), list(hours), list(counts))
        return len(fresh)

    async def totals(self) -> list[tuple[str, str, int]]:
        rows = await self.pool.fetch(TOTALS)
        return [(r[0], r[1], int(r[2])) for r in rows]

    async def write_report(self, day: str, now: datetime) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            total = int(await conn.fetchval(DAY_TOTAL.format("$1"), f"{day}%"))
            await conn.execute(REPORT.format("$1", "$2", "$3"), day, total, now.isoformat())
        return total

    async def close(self) -> None:
        await self.pool.close()


async def open_counts(url: str) -> Counts:
    """`sqlite:///path.db` or `postgresql://…`."""
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresCounts.open(url)
    if url.startswith("sqlite:///"):
        return await SqliteCounts.open(url.removeprefix("sqlite:///"))
    raise ValueError(
        f"ANALYTICS_DB_URL must be sqlite:///… or postgresql://…, got {url.split('@')[-1]}"
    )


def describe(rows: list[tuple[str, str, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for event_type, hour, count in rows:
        out.setdefault(event_type, {})[hour] = count
    return out
