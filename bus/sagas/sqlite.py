"""The saga store in the SQLite store's file: a connection of its own, one transaction a step.

A step's commit is `BEGIN IMMEDIATE` … `COMMIT`: SQLite's one writer at a time serialises the
commits of every process on the file, and the version check in the UPDATE turns a step that
read an older version into a `Conflict`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import aiosqlite

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

SQL = statements(postgres=False)
LIST = list_sql(postgres=False)


class SqliteSagaStore:
    durable = True

    def __init__(self, db: aiosqlite.Connection, outbox: Outbox | None) -> None:
        self._db = db
        self._outbox = outbox
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

    async def load(self, subscriber: str, saga: str, key: str) -> Instance | None:
        async with self._lock:
            rows = await self._db.execute_fetchall(SQL["load"], (subscriber, saga, key))
        row = next(iter(rows), None)
        return None if row is None else _instance(row)

    async def commit(self, t: Transition) -> None:
        assert self._outbox is not None, "a read-only saga store"
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                await self._apply(t)
            except BaseException:
                await asyncio.shield(self._db.execute("ROLLBACK"))
                raise
            await asyncio.shield(self._db.execute("COMMIT"))

    async def _apply(self, t: Transition) -> None:
        db = self._db
        ident = (t.subscriber, t.saga, t.key)
        if t.version == 0:
            found = await db.execute_fetchall(SQL["create"], (*ident, t.state, t.status, t.at))
        else:
            found = await db.execute_fetchall(
                SQL["update"], (*ident, t.state, t.status, t.at, t.version)
            )
        if not list(found):
            raise Conflict(f"{t.saga} {t.key}: version {t.version} is no longer the latest")
        await db.execute(SQL["step"], (*ident, t.version + 1, t.event_id, t.event_type, t.at))
        for o in t.publishes:
            await self._outbox.add(  # type: ignore[union-attr]
                db, o.type, o.data, id=o.id, correlation_id=t.correlation_id,
                causation_id=t.event_id,
            )  # fmt: skip
        for tm in t.timeouts:
            await db.execute(
                SQL["timeout"],
                (tm.id, t.subscriber, t.saga, t.key, tm.type, json.dumps(tm.data),
                 t.at + tm.seconds, t.correlation_id, t.event_id),
            )  # fmt: skip
        await db.execute(SQL["processed"], (t.subscriber, t.event_id, t.at))

    async def instances(
        self, subscriber: str, saga: str | None = None, status: str | None = None,
        limit: int = 100,
    ) -> list[Instance]:  # fmt: skip
        async with self._lock:
            rows = await self._db.execute_fetchall(LIST, (subscriber, saga, status, limit))
        return [_instance(r) for r in rows]

    async def detail(self, subscriber: str, saga: str, key: str, now: float) -> Detail | None:
        found = await self.load(subscriber, saga, key)
        if found is None:
            return None
        async with self._lock:
            steps = await self._db.execute_fetchall(SQL["steps"], (subscriber, saga, key))
            pending = await self._db.execute_fetchall(SQL["pending"], (subscriber, saga, key))
        return Detail(
            found,
            tuple(StepRecord(r[0], r[1], r[2], r[3]) for r in steps),
            ()
            if found.status != "running"
            else tuple(PendingTimeout(r[0], r[1], r[2]) for r in pending),
        )

    async def counts(self, subscriber: str) -> dict[tuple[str, str], int]:
        async with self._lock:
            rows = await self._db.execute_fetchall(SQL["counts"], (subscriber,))
        return {(r[0], r[1]): r[2] for r in rows}

    async def unsent_timeouts(self, limit: int = 100) -> list[UnsentTimeout]:
        async with self._lock:
            rows = await self._db.execute_fetchall(SQL["unsent"], (limit,))
        return [UnsentTimeout(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6]) for r in rows]

    async def mark_sent(self, ids: Sequence[str], at: float) -> None:
        async with self._lock:
            await self._db.executemany(SQL["sent"], [(i, at) for i in ids])

    async def prune(self, older_than: float, now: float) -> int:
        async with self._lock:
            rows = list(await self._db.execute_fetchall(SQL["expired"], (now - older_than,)))
            if not rows:
                return 0
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                for name in ("drop_steps", "drop_timeouts", "drop"):
                    await self._db.executemany(SQL[name], [tuple(r) for r in rows])
            except BaseException:
                await asyncio.shield(self._db.execute("ROLLBACK"))
                raise
            await self._db.execute("COMMIT")
        return len(rows)

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()


def _instance(row: Any) -> Instance:
    return Instance(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7])
