"""Sagas: durable state machines hosted by a subscriber, one instance per key.

`Saga` and `SagaContext` declare them (bus.sagas.saga, pure); `SagaHost` runs their steps
exactly once per event (bus.sagas.host) on a saga store in the subscriber's store database
(bus.sagas.sqlite, bus.sagas.postgres, bus.sagas.memory); `Effects` relays what steps
committed (bus.sagas.effects). `open_saga_store` finds the saga store of a `bus.stores` store.
"""

from __future__ import annotations

from typing import Any

from bus.errors import ConfigError
from bus.sagas.host import SagaHost
from bus.sagas.memory import MemorySagaStore
from bus.sagas.saga import COMPLETED, RUNNING, Saga, SagaContext
from bus.sagas.store import Detail, Instance, SagaStore

__all__ = [
    "COMPLETED", "RUNNING", "Detail", "Instance", "MemorySagaStore", "Saga", "SagaContext",
    "SagaHost", "SagaStore", "open_saga_store", "outbox_url_of",
]  # fmt: skip


async def open_saga_store(store: Any, outbox: Any = None) -> SagaStore:
    """The saga tables beside *store*'s processed table. *outbox* (a `bus.Outbox`) writes the
    steps' publishes (and creates `bus_outbox` there); None opens a reader."""
    kind = type(store).__name__
    if kind == "SqliteStore":
        from bus.sagas.sqlite import SqliteSagaStore

        return await SqliteSagaStore.open(store.path, outbox)
    if kind == "PostgresStore":
        from bus.sagas.postgres import PostgresSagaStore

        return await PostgresSagaStore.open(store.pool, outbox)
    if kind == "MemoryStore":
        found = getattr(store, "sagas", None)  # one per memory store: its processes' view
        if found is None:
            found = store.sagas = MemorySagaStore()
        return found
    raise ConfigError(f"sagas cannot keep their state in a {kind}")


def outbox_url_of(store: Any) -> str | None:
    """Where the relay finds the steps' outbox rows: the store's own database (None: memory)."""
    kind = type(store).__name__
    if kind == "SqliteStore":
        return f"sqlite:///{store.path}"
    if kind == "PostgresStore":
        return str(store.url)
    return None
