"""The saga store over SQL, once for SQLite and PostgreSQL: what a step's commit writes and
what the reports read. A dialect gives its statements (`bus.sagas.sql`) and two ways to reach
its database, each yielding an `Executor`: `_reading()` for single statements and
`_writing()` for one transaction (rolled back when the body raises).

A step's commit is one transaction; the version check in the UPDATE (or the primary key, for a
new instance) turns a step that read an older version into a `Conflict`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from bus.outbox.writer import Outbox
from bus.sagas.store import (
    Conflict,
    Detail,
    Instance,
    PendingTimeout,
    StepRecord,
    Transition,
    UnsentTimeout,
)


class Executor(Protocol):
    """One connection of the dialect: `conn` is what `Outbox.add` writes its rows on."""

    conn: Any

    async def fetch(self, statement: str, *args: Any) -> Sequence[Any]: ...

    async def execute(self, statement: str, *args: Any) -> None: ...

    async def executemany(self, statement: str, rows: list[tuple[Any, ...]]) -> None: ...


class SqlSagaStore:
    durable = True
    SQL: dict[str, str]  # the dialect's statements (bus.sagas.sql.statements)
    LIST: str  # and its `bus saga list` query

    def __init__(self, outbox: Outbox | None) -> None:
        self._outbox = outbox  # None: a reader (`bus saga list`, `bus ui`)

    def _reading(self) -> AbstractAsyncContextManager[Executor]:
        raise NotImplementedError

    def _writing(self) -> AbstractAsyncContextManager[Executor]:
        raise NotImplementedError

    async def load(self, subscriber: str, saga: str, key: str) -> Instance | None:
        async with self._reading() as x:
            rows = await x.fetch(self.SQL["load"], subscriber, saga, key)
        return _instance(rows[0]) if rows else None

    async def commit(self, t: Transition) -> None:
        assert self._outbox is not None, "a read-only saga store"
        async with self._writing() as x:
            await self._apply(x, t, self._outbox)

    async def _apply(self, x: Executor, t: Transition, outbox: Outbox) -> None:
        sql, ident = self.SQL, (t.subscriber, t.saga, t.key)
        if t.version == 0:
            found = await x.fetch(sql["create"], *ident, t.state, t.status, t.at)
        else:
            found = await x.fetch(sql["update"], *ident, t.state, t.status, t.at, t.version)
        if not found:
            raise Conflict(f"{t.saga} {t.key}: version {t.version} is no longer the latest")
        await x.execute(sql["step"], *ident, t.version + 1, t.event_id, t.event_type, t.at)
        for o in t.publishes:
            await outbox.add(
                x.conn, o.type, o.data, id=o.id, correlation_id=t.correlation_id,
                causation_id=t.event_id,
            )  # fmt: skip
        for tm in t.timeouts:
            await x.execute(
                sql["timeout"], tm.id, t.subscriber, t.saga, t.key, tm.type, json.dumps(tm.data),
                t.at + tm.seconds, t.correlation_id, t.event_id,
            )  # fmt: skip
        await x.execute(sql["processed"], t.subscriber, t.event_id, t.at)

    async def instances(
        self, subscriber: str, saga: str | None = None, status: str | None = None,
        limit: int = 100,
    ) -> list[Instance]:  # fmt: skip
        async with self._reading() as x:
            rows = await x.fetch(self.LIST, subscriber, saga, status, limit)
        return [_instance(r) for r in rows]

    async def detail(self, subscriber: str, saga: str, key: str, now: float) -> Detail | None:
        found = await self.load(subscriber, saga, key)
        if found is None:
            return None
        async with self._reading() as x:
            steps = await x.fetch(self.SQL["steps"], subscriber, saga, key)
            pending = await x.fetch(self.SQL["pending"], subscriber, saga, key)
        return Detail(
            found,
            tuple(StepRecord(r[0], r[1], r[2], r[3]) for r in steps),
            ()
            if found.status != "running"
            else tuple(PendingTimeout(r[0], r[1], r[2]) for r in pending),
        )

    async def counts(self, subscriber: str) -> dict[tuple[str, str], int]:
        async with self._reading() as x:
            rows = await x.fetch(self.SQL["counts"], subscriber)
        return {(r[0], r[1]): r[2] for r in rows}

    async def unsent_timeouts(self, limit: int = 100) -> list[UnsentTimeout]:
        async with self._reading() as x:
            rows = await x.fetch(self.SQL["unsent"], limit)
        return [UnsentTimeout(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6]) for r in rows]

    async def mark_sent(self, ids: Sequence[str], at: float) -> None:
        async with self._reading() as x:
            await x.executemany(self.SQL["sent"], [(i, at) for i in ids])

    async def prune(self, older_than: float, now: float) -> int:
        async with self._writing() as x:
            rows = [tuple(r) for r in await x.fetch(self.SQL["expired"], now - older_than)]
            if rows:
                for name in ("drop_steps", "drop_timeouts", "drop"):
                    await x.executemany(self.SQL[name], rows)
        return len(rows)


def _instance(row: Any) -> Instance:
    return Instance(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7])
