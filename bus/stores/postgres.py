"""The production store: PostgreSQL through asyncpg (a pool shared by the handlers)."""

from __future__ import annotations

import time

import asyncpg

from bus.errors import BrokerUnavailable
from bus.settings import redact
from bus.stores import sql
from bus.stores.base import DEFAULT_LEASE, DEFAULT_RETENTION, Claim


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=10, timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            raise BrokerUnavailable(f"cannot reach the store at {redact(url)}: {exc}") from None
        async with pool.acquire() as conn:
            # concurrent first starts of several replicas may race on CREATE TABLE
            await conn.execute("SELECT pg_advisory_lock(8164)")
            try:
                await conn.execute(sql.CREATE)
                await conn.execute(sql.CREATE_INDEX)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(8164)")
        return cls(pool)

    async def claim(self, subscriber: str, event_id: str, lease: float = DEFAULT_LEASE) -> Claim:
        now = time.time()
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                sql.dollar(sql.CLAIM, 4), subscriber, event_id, now + lease, now
            )
            if row is not None:
                return Claim.CLAIMED
            state = await conn.fetchval(sql.dollar(sql.STATE, 2), subscriber, event_id)
        return Claim.DONE if state == "done" else Claim.BUSY

    async def renew(self, subscriber: str, event_id: str, lease: float = DEFAULT_LEASE) -> None:
        await self._pool.execute(
            sql.dollar(sql.RENEW, 3), subscriber, event_id, time.time() + lease
        )

    async def complete(self, subscriber: str, event_id: str) -> None:
        await self._pool.execute(sql.dollar(sql.COMPLETE, 3), subscriber, event_id, time.time())

    async def release(self, subscriber: str, event_id: str) -> None:
        await self._pool.execute(sql.dollar(sql.RELEASE, 2), subscriber, event_id)

    async def prune(self, older_than: float = DEFAULT_RETENTION) -> int:
        status = await self._pool.execute(sql.dollar(sql.PRUNE, 1), time.time() - older_than)
        return int(str(status).split()[-1])

    async def close(self) -> None:
        await self._pool.close()
