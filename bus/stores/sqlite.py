"""The default store: an embedded SQLite file (aiosqlite, WAL).

Handlers that claim or complete in the same loop turn share one commit (group commit): each
call returns only after a commit that includes its statement, so a busy subscriber pays one
transaction per batch instead of two per message, and other processes on the same file see
every claim before its handler runs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiosqlite

from bus.stores import sql
from bus.stores.base import DEFAULT_LEASE, DEFAULT_RETENTION, Claim


class SqliteStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        # One connection serves every concurrent handler: a commit while another coroutine's
        # statement is still open fails ("cannot commit transaction - SQL statements in
        # progress"), so statements and commits take turns.
        self._lock = asyncio.Lock()
        self._commit: asyncio.Future[None] | None = None
        self._committer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        db = await aiosqlite.connect(path, timeout=30)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute(sql.CREATE)
        await db.execute(sql.CREATE_INDEX)
        await db.commit()
        return cls(db)

    async def _write(self, statement: str, args: tuple[Any, ...]) -> Any:
        """Run one statement; returns its first row (RETURNING), after a commit covering it."""
        async with self._lock:  # one trip to the database thread (a cursor would take three)
            rows = await self._db.execute_fetchall(statement, args)
        await self._committed()
        return next(iter(rows), None)

    async def _committed(self) -> None:
        if self._commit is None:
            loop = asyncio.get_running_loop()
            self._commit = loop.create_future()
            self._committer = loop.create_task(self._run_commit(self._commit))
        await asyncio.shield(self._commit)

    async def _run_commit(self, done: asyncio.Future[None]) -> None:
        try:
            async with self._lock:
                self._commit = None  # statements from now on wait for the next commit
                await self._db.commit()
        except Exception as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)

    async def claim(self, subscriber: str, event_id: str, lease: float = DEFAULT_LEASE) -> Claim:
        now = time.time()
        row = await self._write(sql.qmark(sql.CLAIM, 4), (subscriber, event_id, now + lease, now))
        if row is not None:
            return Claim.CLAIMED
        async with self._lock:
            rows = await self._db.execute_fetchall(sql.qmark(sql.STATE, 2), (subscriber, event_id))
        state = next(iter(rows), None)
        return Claim.DONE if state and state[0] == "done" else Claim.BUSY

    async def renew(self, subscriber: str, event_id: str, lease: float = DEFAULT_LEASE) -> None:
        await self._write(sql.qmark(sql.RENEW, 3), (subscriber, event_id, time.time() + lease))

    async def complete(self, subscriber: str, event_id: str) -> None:
        await self._write(sql.qmark(sql.COMPLETE, 3), (subscriber, event_id, time.time()))

    async def release(self, subscriber: str, event_id: str) -> None:
        await self._write(sql.qmark(sql.RELEASE, 2), (subscriber, event_id))

    async def prune(self, older_than: float = DEFAULT_RETENTION) -> int:
        async with self._lock:
            cur = await self._db.execute(sql.qmark(sql.PRUNE, 1), (time.time() - older_than,))
            await self._db.commit()
        return cur.rowcount

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()
