"""The default store: an embedded SQLite file (aiosqlite), WAL mode."""

from __future__ import annotations

import asyncio
import time

import aiosqlite

from bus.stores import sql
from bus.stores.base import DEFAULT_LEASE, DEFAULT_RETENTION, Claim


class SqliteStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        # One connection serves every concurrent handler: a commit while another coroutine's
        # statement is still open fails ("cannot commit transaction - SQL statements in
        # progress"), so each method's statements and commit take one turn.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        db = await aiosqlite.connect(path, timeout=30)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute(sql.CREATE)
        await db.execute(sql.CREATE_INDEX)
        await db.commit()
        return cls(db)

    async def claim(self, subscriber: str, event_id: str, lease: float = DEFAULT_LEASE) -> Claim:
        now = time.time()
        async with self._lock:
            async with self._db.execute(
                sql.qmark(sql.CLAIM, 4), (subscriber, event_id, now + lease, now)
            ) as cur:
                row = await cur.fetchone()
            await self._db.commit()
            if row is not None:
                return Claim.CLAIMED
            async with self._db.execute(sql.qmark(sql.STATE, 2), (subscriber, event_id)) as cur:
                state = await cur.fetchone()
        return Claim.DONE if state and state[0] == "done" else Claim.BUSY

    async def renew(self, subscriber: str, event_id: str, lease: float = DEFAULT_LEASE) -> None:
        async with self._lock:
            await self._db.execute(
                sql.qmark(sql.RENEW, 3), (subscriber, event_id, time.time() + lease)
            )
            await self._db.commit()

    async def complete(self, subscriber: str, event_id: str) -> None:
        async with self._lock:
            await self._db.execute(sql.qmark(sql.COMPLETE, 3), (subscriber, event_id, time.time()))
            await self._db.commit()

    async def release(self, subscriber: str, event_id: str) -> None:
        async with self._lock:
            await self._db.execute(sql.qmark(sql.RELEASE, 2), (subscriber, event_id))
            await self._db.commit()

    async def prune(self, older_than: float = DEFAULT_RETENTION) -> int:
        async with self._lock:
            cur = await self._db.execute(sql.qmark(sql.PRUNE, 1), (time.time() - older_than,))
            await self._db.commit()
        return cur.rowcount

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()
