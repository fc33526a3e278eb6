"""The relay's PostgreSQL side: claim whole transactions, wake on NOTIFY.

No cursor: a sequence value is not commit order (a transaction holding seq 41 may commit after
one holding 42), so a relay that remembered "published up to 42" would never see 41. Each
claim instead looks at the oldest pending rows, takes a transaction-scoped advisory lock per
writing transaction (`txid`) it finds there, and reads every row of the transactions it got.
Another relay skips those transactions, so a transaction is never split between relays and
its rows go out in insert order. A relay that dies mid-claim loses its connection, and with it
its locks: its rows are claimable again at once. Rows are deleted only after their confirm,
in the same database transaction as the claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg

from bus.errors import DatabaseUnavailable, OutboxMissing
from bus.outbox.base import Row, SetAside, Status
from bus.outbox.schema import CHANNEL, TABLE, Dialect, ddl
from bus.settings import redact

log = logging.getLogger(__name__)

LOCK_CLASS = 0x6275  # advisory lock key space of the relays ("bu"); the second key is the txid
INIT_LOCK = 0x62757300  # `bus outbox init` of several replicas at once

_HEAD = f"""SELECT DISTINCT txid FROM (
    SELECT txid FROM {TABLE} WHERE failed_at IS NULL ORDER BY seq LIMIT $1) AS head"""
_LOCK = f"""SELECT t FROM unnest($1::bigint[]) AS t
    WHERE pg_try_advisory_xact_lock({LOCK_CLASS}, (t % 2147483647)::int)"""
_ROWS = f"""SELECT seq, id, type, data::text AS data, source, created_at, correlation_id,
    causation_id, traceparent
    FROM {TABLE} WHERE txid = ANY($1::bigint[]) AND failed_at IS NULL ORDER BY seq"""
_DELETE = f"DELETE FROM {TABLE} WHERE seq = ANY($1::bigint[])"
_SET_ASIDE = f"UPDATE {TABLE} SET failed_at = now(), failure = $2 WHERE seq = $1"
_STATUS = f"""SELECT count(*) FILTER (WHERE failed_at IS NULL) AS pending,
    coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE failed_at IS NULL)), 0)
        AS oldest,
    count(*) FILTER (WHERE failed_at IS NOT NULL) AS set_aside
    FROM {TABLE}"""
_RETRY = f"UPDATE {TABLE} SET failed_at = NULL, failure = NULL WHERE failed_at IS NOT NULL"
_SAMPLE = f"""SELECT id, type, failure, failed_at FROM {TABLE}
    WHERE failed_at IS NOT NULL ORDER BY seq LIMIT $1"""


async def init(conn: asyncpg.Connection) -> None:
    """Create the table, its indexes and its NOTIFY trigger (idempotent, replica-safe)."""
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({INIT_LOCK})")
        for statement in ddl(Dialect.POSTGRES):
            await conn.execute(statement)


class _PgClaim:
    def __init__(self, conn: asyncpg.Connection, tx: Any, pool: asyncpg.Pool) -> None:
        self._conn = conn
        self._tx = tx
        self._pool = pool
        self.rows: list[Row] = []

    async def finish(self, done: Sequence[int], set_aside: Sequence[tuple[int, str]]) -> None:
        try:
            if done:
                await self._conn.execute(_DELETE, list(done))
            if set_aside:
                await self._conn.executemany(_SET_ASIDE, list(set_aside))
            await self._tx.commit()
        except BaseException:
            await self.abandon()
            raise
        await self._pool.release(self._conn)

    async def abandon(self) -> None:
        with contextlib.suppress(Exception):  # a dead connection rolled back already
            await self._tx.rollback()
        await self._pool.release(self._conn)


class PostgresOutbox:
    """`bus_outbox` on PostgreSQL, through an asyncpg pool and one listening connection."""

    def __init__(self, url: str, pool: asyncpg.Pool) -> None:
        self._url = url
        self._pool = pool
        self._listener: asyncpg.Connection | None = None
        self._wake = asyncio.Event()

    @classmethod
    async def open(cls, url: str, *, create: bool = False) -> PostgresOutbox:
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=4, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise DatabaseUnavailable(f"cannot reach the outbox at {redact(url)}: {exc}") from None
        async with pool.acquire() as conn:
            if create:
                await init(conn)
                found = True
            else:
                found = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", TABLE)
        if not found:  # closed once the connection is back in the pool: close() waits for it
            await pool.close()
            raise OutboxMissing(
                f"no {TABLE} table at {redact(url)}: run `bus outbox init` "
                "(or `bus outbox init --sql` for your migration tool)"
            )
        return cls(url, pool)

    async def claim(self, limit: int) -> _PgClaim:
        conn = await self._pool.acquire()
        tx = conn.transaction()
        claim = _PgClaim(conn, tx, self._pool)
        try:
            await tx.start()
            head = [r["txid"] for r in await conn.fetch(_HEAD, limit)]
            mine = [r["t"] for r in await conn.fetch(_LOCK, head)] if head else []
            if mine:  # a new statement: it sees whatever a previous holder deleted
                claim.rows = [Row(**dict(r)) for r in await conn.fetch(_ROWS, mine)]
        except BaseException:
            await claim.abandon()
            raise
        return claim

    async def wait(self, timeout: float) -> None:
        if self._listener is None or self._listener.is_closed():
            self._listener = None
            with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
                self._listener = await asyncpg.connect(self._url, timeout=10)
                await self._listener.add_listener(CHANNEL, self._notified)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def status(self, sample: int = 20) -> Status:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(_STATUS)
            aside = await conn.fetch(_SAMPLE, sample) if row["set_aside"] else []
        return Status(
            pending=row["pending"],
            oldest_age_seconds=max(0.0, float(row["oldest"])),
            set_aside=row["set_aside"],
            set_aside_rows=tuple(SetAside(**dict(r)) for r in aside),
        )

    async def retry(self, ids: Sequence[str] | None) -> int:
        statement = (
            f"UPDATE {TABLE} SET failed_at = NULL, failure = NULL WHERE failed_at IS NOT NULL"
        )
        args: list[Any] = []
        if ids is not None:
            statement += " AND id = ANY($1::text[])"
            args.append(list(ids))
        result = await self._pool.execute(statement, *args)
        return int(str(result).split()[-1])

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
        await self._pool.close()
