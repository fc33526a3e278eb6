"""Idempotency stores: the event id is the operation id.

A processed table with a unique index on (subscriber, event_id). The runtime claims an id
before the handler runs, marks it done after success, and releases it on failure, so a second
delivery of a done id is acked without running the handler, and a failed attempt leaves no record.
A claim is a lease: a replica that died mid-handler does not block the id forever.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

from bus.errors import ConfigError, DatabaseUnavailable
from bus.extras import require
from bus.settings import redact
from bus.stores.base import Claim, Store
from bus.stores.memory import MemoryStore

__all__ = ["Claim", "MemoryStore", "Store", "open_store"]


async def open_store(url: str) -> Store:
    """A connected store for `BUS_STORE_URL`: ``sqlite:///path.db``, ``postgresql://…``, ``memory://``."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        from bus.stores.sqlite import SqliteStore

        path = url.removeprefix("sqlite://")
        path = path[1:] if path.startswith("/") else path  # sqlite:////abs or sqlite:///rel
        if not path:
            raise ConfigError(
                "BUS_STORE_URL: sqlite needs a path, e.g. sqlite:///.bus/processed.db"
            )
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return await SqliteStore.open(path)
        except (OSError, sqlite3.Error) as exc:
            raise DatabaseUnavailable(f"cannot open the store at {path}: {exc}") from None
    if scheme in ("postgresql", "postgres"):
        require("asyncpg", "postgres", "a PostgreSQL store (BUS_STORE_URL=postgresql://…)")
        from bus.stores.postgres import PostgresStore

        return await PostgresStore.open(url)
    raise ConfigError(
        f"BUS_STORE_URL: unsupported store {redact(url)} (use sqlite:///…, postgresql://…, memory://)"
    )
