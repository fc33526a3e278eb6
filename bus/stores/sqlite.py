"""The default store: an embedded SQLite file (aiosqlite, WAL).

Handlers that claim or complete in the same loop turn share one commit (group commit): each
call returns only after a commit that includes its statement, so a busy subscriber pays one
transaction per batch instead of two per message, and other processes on the same file see
every claim before its handler runs.

Each store names its claims' owner (bus.stores.owner): a claim of a process that died on this
machine is taken over at once instead of after its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from typing import Any

import aiosqlite

from bus.stores import sql
from bus.stores.base import DEFAULT_LEASE, DEFAULT_RETENTION, Claim
from bus.stores.owner import local_owner, local_owner_dead

log = logging.getLogger(__name__)


class SqliteStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self.path = ""  # the database file, set by `open`
        self.owner = local_owner()  # this store's claims: this process
        # One connection serves every concurrent handler: a commit while another coroutine's
        # statement is still open fails ("cannot commit transaction - SQL statements in
        # progress"), so statements and commits take turns.
        self._lock = asyncio.Lock()
        self._commit: asyncio.Future[None] | None = None
        self._committer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        db = await aiosqlite.connect(path, timeout=30)
        try:
            await cls._prepare(db)
        except BaseException:
            await db.close()  # its thread would keep the process alive
            raise
        store = cls(db)
        store.path = path
        return store

    @staticmethod
    async def _prepare(db: aiosqlite.Connection) -> None:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute(sql.CREATE)
        await db.execute(sql.CREATE_INDEX)
        await db.execute(sql.CREATE_HOLDS)
        for statement in sql.saga_ddl("TEXT"):
            await db.execute(statement)
        columns = {row[1] for row in await db.execute_fetchall(f"PRAGMA table_info({sql.TABLE})")}
        if "owner" not in columns:
            with contextlib.suppress(sqlite3.OperationalError):  # another process was first
                await db.execute(sql.ADD_OWNER)
        await db.commit()

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
        row = await self._write(
            sql.qmark(sql.CLAIM, 5), (subscriber, event_id, now + lease, now, self.owner)
        )
        if row is not None:
            return Claim.CLAIMED
        async with self._lock:
            rows = await self._db.execute_fetchall(sql.qmark(sql.STATE, 2), (subscriber, event_id))
        state = next(iter(rows), None)
        if state is None:  # released between our two statements: the caller asks again
            return Claim.BUSY
        if state[0] == "done":
            return Claim.DONE
        holder = str(state[1])
        if holder != self.owner and local_owner_dead(holder):
            took = await self._write(
                sql.qmark(sql.TAKE_OVER, 6),
                (subscriber, event_id, self.owner, now + lease, now, holder),
            )
            if took is not None:
                log.info("took over the claim on %s of %s, whose process is gone", event_id, holder)
                return Claim.CLAIMED
        return Claim.BUSY

    async def renew(self, subscriber: str, event_id: str, lease: float = DEFAULT_LEASE) -> None:
        await self._write(
            sql.qmark(sql.RENEW, 4), (subscriber, event_id, time.time() + lease, self.owner)
        )

    async def complete(self, subscriber: str, event_id: str) -> None:
        await self._write(sql.qmark(sql.COMPLETE, 3), (subscriber, event_id, time.time()))

    async def release(self, subscriber: str, event_id: str) -> None:
        await self._write(sql.qmark(sql.RELEASE, 3), (subscriber, event_id, self.owner))

    async def hold(self, subscriber: str, key: str, event_id: str) -> None:
        await self._write(sql.qmark(sql.HOLD, 4), (subscriber, key, event_id, time.time()))

    async def unhold(self, subscriber: str, key: str, event_id: str) -> None:
        await self._write(sql.qmark(sql.UNHOLD, 3), (subscriber, key, event_id))

    async def holds(self, subscriber: str) -> list[tuple[str, str, float]]:
        async with self._lock:
            rows = await self._db.execute_fetchall(sql.qmark(sql.HOLDS, 1), (subscriber,))
        return [(str(k), str(e), float(t)) for k, e, t in rows]

    async def prune(self, older_than: float = DEFAULT_RETENTION) -> int:
        async with self._lock:
            cur = await self._db.execute(sql.qmark(sql.PRUNE, 1), (time.time() - older_than,))
            await self._db.commit()
        return cur.rowcount

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()
