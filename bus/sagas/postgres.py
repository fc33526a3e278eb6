"""The saga store in the PostgreSQL store's database, on the store's connection pool.

A step's commit is one transaction on a connection of the pool; the version check in the
UPDATE (or the primary key, for a new instance) turns a step that read an older version into
a `Conflict` (`bus.sagas.sqlstore`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from bus.outbox.schema import Dialect, ddl
from bus.outbox.writer import Outbox
from bus.sagas.sql import list_sql, statements
from bus.sagas.sqlstore import SqlSagaStore


class _Connection:
    """The `Executor` of an asyncpg connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def fetch(self, statement: str, *args: Any) -> Sequence[Any]:
        return await self.conn.fetch(statement, *args)  # type: ignore[no-any-return]

    async def execute(self, statement: str, *args: Any) -> None:
        await self.conn.execute(statement, *args)

    async def executemany(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        await self.conn.executemany(statement, rows)


class PostgresSagaStore(SqlSagaStore):
    SQL = statements(postgres=True)
    LIST = list_sql(postgres=True)

    def __init__(self, pool: asyncpg.Pool, outbox: Outbox | None) -> None:
        super().__init__(outbox)
        self._pool = pool

    @classmethod
    async def open(cls, pool: asyncpg.Pool, outbox: Outbox | None) -> PostgresSagaStore:
        if outbox is not None:  # the subscriber relays its own rows from this database
            async with pool.acquire() as conn:
                await conn.execute("SELECT pg_advisory_lock(8165)")
                try:
                    for statement in ddl(Dialect.POSTGRES):
                        await conn.execute(statement)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(8165)")
        return cls(pool, outbox)

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[_Connection]:
        async with self._pool.acquire() as conn:
            yield _Connection(conn)

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[_Connection]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield _Connection(conn)

    async def close(self) -> None:
        return None  # the pool is the store's
