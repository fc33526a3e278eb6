"""The saga store in the SQLite store's file: a connection of its own, one transaction a step.

A step's commit is `BEGIN IMMEDIATE` … `COMMIT`: SQLite's one writer at a time serialises the
commits of every process on the file, and the version check in the UPDATE turns a step that
read an older version into a `Conflict` (`bus.sagas.sqlstore`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiosqlite

from bus.outbox.schema import Dialect, ddl
from bus.outbox.writer import Outbox
from bus.sagas.sql import list_sql, statements
from bus.sagas.sqlstore import SqlSagaStore


class _Connection:
    """The `Executor` of a SQLite connection: parameters as one tuple."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.conn = db

    async def fetch(self, statement: str, *args: Any) -> Sequence[Any]:
        return list(await self.conn.execute_fetchall(statement, args))

    async def execute(self, statement: str, *args: Any) -> None:
        await self.conn.execute(statement, args)

    async def executemany(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        await self.conn.executemany(statement, rows)


class SqliteSagaStore(SqlSagaStore):
    SQL = statements(postgres=False)
    LIST = list_sql(postgres=False)

    def __init__(self, db: aiosqlite.Connection, outbox: Outbox | None) -> None:
        super().__init__(outbox)
        self._db = _Connection(db)
        self._lock = asyncio.Lock()  # one connection: one transaction at a time

    @classmethod
    async def open(cls, path: str, outbox: Outbox | None) -> SqliteSagaStore:
        """*outbox* writes a step's publishes; None for a reader (`bus saga list`)."""
        db = await aiosqlite.connect(path, timeout=30, isolation_level=None)
        await db.execute("PRAGMA busy_timeout=30000")
        if outbox is not None:  # the subscriber relays its own rows from this file
            await db.execute("BEGIN IMMEDIATE")
            for statement in ddl(Dialect.SQLITE):
                await db.execute(statement)
            await db.execute("COMMIT")
        return cls(db, outbox)

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[_Connection]:
        async with self._lock:  # autocommit: each statement its own transaction
            yield self._db

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[_Connection]:
        async with self._lock:
            db = self._db.conn
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await asyncio.shield(db.execute("ROLLBACK"))
                raise
            await asyncio.shield(db.execute("COMMIT"))

    async def close(self) -> None:
        async with self._lock:
            await self._db.conn.close()
