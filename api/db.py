"""The API's tables and its engine: SQLite (aiosqlite, WAL) or PostgreSQL (asyncpg), by URL.

The same database holds `bus_outbox`, so an order and its event commit together. `create_schema`
creates both, idempotently; on PostgreSQL under an advisory lock, so replicas starting at once
do not race on `CREATE TABLE IF NOT EXISTS`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    event,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from api.settings import ensure_parent, sqlalchemy_url
from bus.outbox.schema import Dialect, ddl, dialect_of

SQLITE_BUSY_TIMEOUT_MS = 5000
POOL_SIZE = 10  # PostgreSQL connections kept open per process
POOL_OVERFLOW = 20  # and opened beyond that for a burst
SCHEMA_LOCK = 0x0B05_A91  # pg_advisory_xact_lock key: one replica creates the tables at a time

metadata = MetaData()

orders = Table(
    "orders",
    metadata,
    Column("id", String(64), primary_key=True),
    # a client's retry with the same key finds this order instead of making a second one
    Column("idempotency_key", String(255), unique=True, nullable=True),
    Column("request_hash", String(64), nullable=False),
    Column("email", String(320), nullable=False),
    Column("customer", String(200), nullable=False),
    Column("total_cents", Integer, nullable=False),
    Column("event_id", String(64), nullable=False),  # its order.placed row in bus_outbox
    Column("created_at", DateTime(timezone=True), nullable=False),
)

order_items = Table(
    "order_items",
    metadata,
    Column("order_id", String(64), ForeignKey("orders.id"), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("sku", String(64), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_cents", Integer, nullable=False),
)

# states the bus reported back (shipment_requested); one row per state, so recording is idempotent
order_progress = Table(
    "order_progress",
    metadata,
    Column("order_id", String(64), ForeignKey("orders.id"), primary_key=True),
    Column("state", String(32), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("event_id", String(64), nullable=True),
    Column("detail", String(200), nullable=True),
)


def open_engine(url: str, **kw: Any) -> AsyncEngine:
    """An async engine for `sqlite:///…` or `postgresql://…` (BUS_OUTBOX_URL)."""
    ensure_parent(url)
    if dialect_of(url) is Dialect.POSTGRES:
        # connections beyond pool_size are closed when returned, and opening one costs more
        # than a whole request: keep enough for a burst
        kw = {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW, **kw}
    engine = create_async_engine(sqlalchemy_url(url), **kw)
    if dialect_of(url) is Dialect.SQLITE:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never block the writer (the relay reads while we write); busy_timeout: a
    # writer waits its turn instead of failing with "database is locked"
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def dialect(engine: AsyncEngine) -> Dialect:
    return Dialect.POSTGRES if engine.dialect.name == "postgresql" else Dialect.SQLITE


async def create_schema(engine: AsyncEngine) -> None:
    """The API's tables and `bus_outbox` (its DDL from `bus.outbox.schema`); idempotent."""
    kind = dialect(engine)
    async with engine.begin() as conn:
        if kind is Dialect.POSTGRES:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        await conn.run_sync(metadata.create_all)
        for statement in ddl(kind):
            await conn.exec_driver_sql(statement)


async def ping(engine: AsyncEngine) -> None:
    """Raises unless the database answers `SELECT 1`."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
