"""The saga store in the PostgreSQL store's database, on the store's connection pool.

A step's commit is one transaction; the version check in the UPDATE (or the primary key, for a
new instance) turns a step that read an older version into a `Conflict`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from bus.outbox.schema import Dialect, ddl
from bus.outbox.writer import Outbox
from bus.sagas.sql import list_sql, statements
from bus.sagas.store import (
    Conflict,
    Detail,
    Instance,
    PendingTimeout,
    StepRecord,
    Transition,
    UnsentTimeout,
)

SQL = statements(postgres=True)
LIST = list_sql(postgres=True)


class PostgresSagaStore:
    durable = True

    def __init__(self, pool: asyncpg.Pool, outbox: Outbox | None) -> None:
        self._pool = pool
        self._outbox = outbox

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

    async def load(self, subscriber: str, saga: str, key: str) -> Instance | None:
        row = await self._pool.fetchrow(SQL["load"], subscriber, saga, key)
        return None if row is None else _instance(row)

    async def commit(self, t: Transition) -> None:
        assert self._outbox is not None, "a read-only saga store"
        ident = (t.subscriber, t.saga, t.key)
        async with self._pool.acquire() as conn, conn.transaction():
            if t.version == 0:
                found = await conn.fetchrow(SQL["create"], *ident, t.state, t.status, t.at)
            else:
                found = await conn.fetchrow(
                    SQL["update"], *ident, t.state, t.status, t.at, t.version
                )
            if found is None:
                raise Conflict(f"{t.saga} {t.key}: version {t.version} is no longer the latest")
            await conn.execute(SQL["step"], *ident, t.version + 1, t.event_id, t.event_type, t.at)
            for o in t.publishes:
                await self._outbox.add(
                    conn, o.type, o.data, id=o.id, correlation_id=t.correlation_id,
                    causation_id=t.event_id,
                )  # fmt: skip
            for tm in t.timeouts:
                await conn.execute(
                    SQL["timeout"], tm.id, t.subscriber, t.saga, t.key, tm.type,
                    json.dumps(tm.data), t.at + tm.seconds, t.correlation_id, t.event_id,
                )  # fmt: skip
            await conn.execute(SQL["processed"], t.subscriber, t.event_id, t.at)

    async def instances(
        self, subscriber: str, saga: str | None = None, status: str | None = None,
        limit: int = 100,
    ) -> list[Instance]:  # fmt: skip
        rows = await self._pool.fetch(LIST, subscriber, saga, status, limit)
        return [_instance(r) for r in rows]

    async def detail(self, subscriber: str, saga: str, key: str, now: float) -> Detail | None:
        found = await self.load(subscriber, saga, key)
        if found is None:
            return None
        steps = await self._pool.fetch(SQL["steps"], subscriber, saga, key)
        pending = await self._pool.fetch(SQL["pending"], subscriber, saga, key)
        return Detail(
            found,
            tuple(StepRecord(r[0], r[1], r[2], r[3]) for r in steps),
            ()
            if found.status != "running"
            else tuple(PendingTimeout(r[0], r[1], r[2]) for r in pending),
        )

    async def counts(self, subscriber: str) -> dict[tuple[str, str], int]:
        rows = await self._pool.fetch(SQL["counts"], subscriber)
        return {(r[0], r[1]): r[2] for r in rows}

    async def unsent_timeouts(self, limit: int = 100) -> list[UnsentTimeout]:
        rows = await self._pool.fetch(SQL["unsent"], limit)
        return [UnsentTimeout(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6]) for r in rows]

    async def mark_sent(self, ids: Sequence[str], at: float) -> None:
        await self._pool.executemany(SQL["sent"], [(i, at) for i in ids])

    async def prune(self, older_than: float, now: float) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(SQL["expired"], now - older_than)
            for name in ("drop_steps", "drop_timeouts", "drop"):
                await conn.executemany(SQL[name], [tuple(r) for r in rows])
        return len(rows)

    async def close(self) -> None:
        return None  # the pool is the store's


def _instance(row: Any) -> Instance:
    return Instance(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7])
