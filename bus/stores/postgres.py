"""The production store: PostgreSQL through asyncpg (a pool shared by the handlers).

Claims name their owner, `pg:<key>`: each store holds the session advisory lock `<key>` on a
connection of its own for as long as it is open. PostgreSQL drops the lock the moment that
connection ends, so when a replica is killed its claims are known abandoned at once (from
`pg_locks`, seen by every replica), and another replica takes the redelivered event over
without waiting out the lease. A live replica keeps its lock however busy it is, so two live
replicas racing on one id still run the handler once. If the lock connection itself drops
while the process lives, the store takes the lock again at once; in between, its claims look
abandoned, like those of a replica partitioned from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

import asyncpg

from bus.errors import DatabaseUnavailable
from bus.settings import redact
from bus.stores import sql
from bus.stores.base import DEFAULT_LEASE, DEFAULT_RETENTION, Claim

log = logging.getLogger(__name__)

OWNER_PREFIX = "pg:"
# A granted session advisory lock on one bigint key: PostgreSQL shows its high and low
# 32 bits as classid and objid, with objsubid 1.
_LOCK_HELD = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid = $1::bigint::oid AND objid = $2::bigint::oid
)
"""


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self._url = url
        self._key = secrets.randbits(62)
        self.owner = f"{OWNER_PREFIX}{self._key}"
        self._identity: Any = None  # the connection holding our advisory lock
        self._relock: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=10, timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            raise DatabaseUnavailable(f"cannot reach the store at {redact(url)}: {exc}") from None
        async with pool.acquire() as conn:
            # concurrent first starts of several replicas may race on CREATE TABLE
            await conn.execute("SELECT pg_advisory_lock(8164)")
            try:
                await conn.execute(sql.CREATE)
                await conn.execute(sql.CREATE_INDEX)
                await conn.execute(sql.ADD_OWNER_IF_MISSING)
                await conn.execute(sql.CREATE_HOLDS)
                for statement in sql.saga_ddl("jsonb"):
                    await conn.execute(statement)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(8164)")
        store = cls(pool, url)
        try:
            await store._lock_identity()
        except (OSError, asyncpg.PostgresError) as exc:
            await pool.close()
            raise DatabaseUnavailable(f"cannot reach the store at {redact(url)}: {exc}") from None
        return store

    @property
    def pool(self) -> asyncpg.Pool:
        """The connection pool (the saga tables share the database)."""
        return self._pool

    @property
    def url(self) -> str:
        return self._url

    async def _lock_identity(self) -> None:
        conn = await asyncpg.connect(self._url, timeout=10)
        await conn.execute("SELECT pg_advisory_lock($1)", self._key)
        conn.add_termination_listener(self._identity_lost)
        self._identity = conn

    def _identity_lost(self, _conn: Any) -> None:
        if self._closing or (self._relock is not None and not self._relock.done()):
            return
        log.warning("the store's lock connection dropped: taking the owner lock again")
        self._relock = asyncio.get_running_loop().create_task(self._relock_forever())

    async def _relock_forever(self) -> None:
        while not self._closing:
            try:
                await self._lock_identity()
                return
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("cannot take the owner lock yet (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _owner_dead(self, conn: Any, owner: str) -> bool:
        """True when *owner* is a store whose lock connection has ended."""
        if not owner.startswith(OWNER_PREFIX) or owner == self.owner:
            return False
        try:
            key = int(owner.removeprefix(OWNER_PREFIX))
        except ValueError:
            return False
        held = await conn.fetchval(_LOCK_HELD, key >> 32, key & 0xFFFFFFFF)
        return not held

    async def claim(self, subscriber: str, event_id: str, lease: float = DEFAULT_LEASE) -> Claim:
        now = time.time()
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                sql.dollar(sql.CLAIM, 5), subscriber, event_id, now + lease, now, self.owner
            )
            if row is not None:
                return Claim.CLAIMED
            found = await conn.fetchrow(sql.dollar(sql.STATE, 2), subscriber, event_id)
            if found is None:  # released between our two statements: the caller asks again
                return Claim.BUSY
            if found["state"] == "done":
                return Claim.DONE
            holder = str(found["owner"])
            if await self._owner_dead(conn, holder):
                took = await conn.fetchrow(
                    sql.dollar(sql.TAKE_OVER, 6),
                    subscriber, event_id, self.owner, now + lease, now, holder,
                )  # fmt: skip
                if took is not None:
                    log.info("took over the claim on %s of %s, whose connection is gone",
                             event_id, holder)  # fmt: skip
                    return Claim.CLAIMED
        return Claim.BUSY

    async def renew(self, subscriber: str, event_id: str, lease: float = DEFAULT_LEASE) -> None:
        await self._pool.execute(
            sql.dollar(sql.RENEW, 4), subscriber, event_id, time.time() + lease, self.owner
        )

    async def complete(self, subscriber: str, event_id: str) -> None:
        await self._pool.execute(sql.dollar(sql.COMPLETE, 3), subscriber, event_id, time.time())

    async def release(self, subscriber: str, event_id: str) -> None:
        await self._pool.execute(sql.dollar(sql.RELEASE, 3), subscriber, event_id, self.owner)

    async def hold(self, subscriber: str, key: str, event_id: str) -> None:
        await self._pool.execute(sql.dollar(sql.HOLD, 4), subscriber, key, event_id, time.time())

    async def unhold(self, subscriber: str, key: str, event_id: str) -> None:
        await self._pool.execute(sql.dollar(sql.UNHOLD, 3), subscriber, key, event_id)

    async def holds(self, subscriber: str) -> list[tuple[str, str, float]]:
        rows = await self._pool.fetch(sql.dollar(sql.HOLDS, 1), subscriber)
        return [(str(r["hold_key"]), str(r["event_id"]), float(r["since"])) for r in rows]

    async def prune(self, older_than: float = DEFAULT_RETENTION) -> int:
        status = await self._pool.execute(sql.dollar(sql.PRUNE, 1), time.time() - older_than)
        return int(str(status).split()[-1])

    async def close(self) -> None:
        self._closing = True
        if self._relock is not None:
            self._relock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relock
        if self._identity is not None:
            with contextlib.suppress(Exception):
                await self._identity.close()
        await self._pool.close()
