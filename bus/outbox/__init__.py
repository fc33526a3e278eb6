"""The transactional outbox: events written with the producer's data, relayed afterwards.

`Outbox` writes (bus.outbox.writer); `open_outbox` gives the relay's side of the table
(bus.outbox.postgres, bus.outbox.sqlite), by `BUS_OUTBOX_URL`.
"""

from __future__ import annotations

from bus.extras import require
from bus.outbox.base import OutboxStore, Status
from bus.outbox.schema import Dialect, dialect_of
from bus.outbox.writer import Outbox

__all__ = ["Outbox", "OutboxStore", "Status", "open_outbox"]


async def open_outbox(url: str, *, create: bool = False) -> OutboxStore:
    """The outbox at *url*; `create=True` creates the table first (`bus outbox init`)."""
    if dialect_of(url) is Dialect.POSTGRES:
        require("asyncpg", "postgres", "a PostgreSQL outbox (BUS_OUTBOX_URL=postgresql://…)")
        from bus.outbox.postgres import PostgresOutbox

        return await PostgresOutbox.open(url.replace("+asyncpg", ""), create=create)
    from bus.outbox.sqlite import SqliteOutbox

    return await SqliteOutbox.open(url, create=create)
