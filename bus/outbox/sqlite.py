"""The relay's SQLite side: the embedded default, for one machine.

SQLite has one writer at a time and no transaction ids, so relays take turns instead of
sharing: the holder of a short lease (`bus_outbox_lease`) is the one relay publishing, others
stand by and take over when it lapses (a relay that stops cleanly hands it over at once). The
holder reads the oldest rows, publishes them, then deletes them, each step its own short
transaction, so the writer (the API) never waits for the broker. Short polling, no NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from bus.errors import OutboxMissing
from bus.outbox.base import Row, SetAside, Status
from bus.outbox.schema import TABLE, Dialect, ddl
from bus.settings import sqlite_path

LEASE_SECONDS = 5.0  # a relay that died is replaced within this; a live one renews every ~1 s

_ROWS = f"""SELECT seq, id, type, data, source, created_at, correlation_id, causation_id,
    traceparent FROM {TABLE} WHERE failed_at IS NULL ORDER BY seq LIMIT ?"""
_TAKE = f"""INSERT INTO {TABLE}_lease (name, holder, expires_at) VALUES ('relay', ?, ?)
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE {TABLE}_lease.expires_at < ? OR {TABLE}_lease.holder = excluded.holder"""
_HOLDER = f"SELECT holder FROM {TABLE}_lease WHERE name = 'relay'"
_STATUS = f"""SELECT count(*) FILTER (WHERE failed_at IS NULL),
    min(created_at) FILTER (WHERE failed_at IS NULL),
    count(*) FILTER (WHERE failed_at IS NOT NULL) FROM {TABLE}"""
_RETRY = f"UPDATE {TABLE} SET failed_at = NULL, failure = NULL WHERE failed_at IS NOT NULL"
_SAMPLE = f"""SELECT id, type, failure, failed_at FROM {TABLE}
    WHERE failed_at IS NOT NULL ORDER BY seq LIMIT ?"""


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class _SqliteClaim:
    def __init__(self, outbox: SqliteOutbox, rows: list[Row]) -> None:
        self._outbox = outbox
        self.rows = rows

    async def finish(self, done: Sequence[int], set_aside: Sequence[tuple[int, str]]) -> None:
        db = self._outbox.db
        async with self._outbox.lock:
            if done:
                marks = ",".join("?" * len(done))
                await db.execute(f"DELETE FROM {TABLE} WHERE seq IN ({marks})", tuple(done))
            if set_aside:
                now = _now()
                await db.executemany(
                    f"UPDATE {TABLE} SET failed_at = ?, failure = ? WHERE seq = ?",
                    [(now, reason, seq) for seq, reason in set_aside],
                )
            await db.commit()

    async def abandon(self) -> None:
        pass  # nothing was locked: the rows stay where they are


class SqliteOutbox:
    """`bus_outbox` in an SQLite file."""

    def __init__(self, db: aiosqlite.Connection, poll: float = 0.1) -> None:
        self.db = db
        self.lock = asyncio.Lock()  # one aiosqlite connection: statements take turns
        self.poll = poll
        self.me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._lease_until = 0.0
        self._next_try = 0.0
        self._renewer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, *, create: bool = False) -> SqliteOutbox:
        path = sqlite_path(url, "BUS_OUTBOX_URL")
        if create:
            await asyncio.to_thread(Path(path).parent.mkdir, parents=True, exist_ok=True)
        elif not await asyncio.to_thread(Path(path).exists):
            raise OutboxMissing(f"no outbox database at {path}: run `bus outbox init`")
        db = await aiosqlite.connect(path, timeout=30)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA busy_timeout=30000")
        if create:
            for statement in ddl(Dialect.SQLITE):
                await db.execute(statement)
            await db.commit()
        rows = await db.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (f"{TABLE}_lease",)
        )
        if not list(rows):
            await db.close()
            raise OutboxMissing(f"no {TABLE} table in {path}: run `bus outbox init`")
        return cls(db)

    async def _take(self) -> bool:
        """Take or renew the lease; True while this relay holds it."""
        now = time.time()
        async with self.lock:
            await self.db.execute(_TAKE, (self.me, now + LEASE_SECONDS, now))
            await self.db.commit()
            holder = next(iter(await self.db.execute_fetchall(_HOLDER)), (None,))[0]
        self._lease_until = now + LEASE_SECONDS if holder == self.me else 0.0
        return holder == self.me

    async def _keep_lease(self) -> None:
        """Renew in the background, so a publish slower than the lease never lets another
        relay in beside this one; only a dead (or frozen) relay loses it."""
        while True:
            await asyncio.sleep(LEASE_SECONDS / 5)
            with contextlib.suppress(sqlite3.Error):
                await self._take()

    async def claim(self, limit: int) -> _SqliteClaim:
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._keep_lease())
        now = time.time()
        # a standby asks for the lease about once a second
        if now >= self._lease_until and (now < self._next_try or not await self._take()):
            self._next_try = now + LEASE_SECONDS / 5
            return _SqliteClaim(self, [])
        async with self.lock:
            found = await self.db.execute_fetchall(_ROWS, (limit,))
        rows = [
            Row(
                seq=r[0],
                id=r[1],
                type=r[2],
                data=r[3],
                source=r[4],
                created_at=_parse_time(r[5]) or datetime.now(UTC),
                correlation_id=r[6],
                causation_id=r[7],
                traceparent=r[8],
            )
            for r in found
        ]
        return _SqliteClaim(self, rows)

    async def wait(self, timeout: float) -> None:
        await asyncio.sleep(min(timeout, self.poll))

    async def status(self, sample: int = 20) -> Status:
        async with self.lock:
            pending, oldest, aside = next(iter(await self.db.execute_fetchall(_STATUS)))
            rows = await self.db.execute_fetchall(_SAMPLE, (sample,)) if aside else []
        first = _parse_time(oldest)
        age = (datetime.now(UTC) - first).total_seconds() if first else 0.0
        return Status(
            pending=pending,
            oldest_age_seconds=max(0.0, age),
            set_aside=aside,
            set_aside_rows=tuple(SetAside(r[0], r[1], r[2], _parse_time(r[3])) for r in rows),
        )

    async def retry(self, ids: Sequence[str] | None) -> int:
        statement = (
            f"UPDATE {TABLE} SET failed_at = NULL, failure = NULL WHERE failed_at IS NOT NULL"
        )
        args: tuple[str, ...] = ()
        if ids is not None:
            statement += f" AND id IN ({','.join('?' * len(ids))})"
            args = tuple(ids)
        async with self.lock:
            cursor = await self.db.execute(statement, args)
            await self.db.commit()
        return cursor.rowcount

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        async with self.lock:
            if self._lease_until:  # hand over at once instead of letting the lease lapse
                await self.db.execute(
                    f"DELETE FROM {TABLE}_lease WHERE name = 'relay' AND holder = ?", (self.me,)
                )
                await self.db.commit()
            await self.db.close()
