"""`Outbox`: write an event into the producer's own database, inside the caller's transaction.

The row commits or rolls back with the caller's data; `bus relay` publishes it afterwards. The
checks and the envelope are the publisher's: an undeclared type or data failing its schema
raises before anything is written, and the relayed event carries the same id, source, time,
correlation and causation ids and `traceparent` a direct `Publisher.publish` would have sent.

Connections it takes: asyncpg (`Connection`, a pool's connection), SQLAlchemy 2 async
(`AsyncConnection`, `AsyncSession`) and aiosqlite with `add`; SQLAlchemy sync (`Connection`,
`Session`) and `sqlite3` with `add_sync`.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from bus import tracing
from bus.envelope import Event, dumps, new_traceparent
from bus.errors import ConfigError, InvalidEvent
from bus.outbox.schema import COLUMNS, Dialect, insert_sql
from bus.produce.validation import EventChecker
from bus.settings import Settings
from bus.topology.model import Topology
from bus.topology.model import load as load_topology


class Outbox:
    """Adds checked events to `bus_outbox`: `await outbox.add(conn, "order.placed", data)`."""

    def __init__(self, topology: Topology, *, source: str = "bus") -> None:
        self.topology = topology
        self.source = source
        self._checker = EventChecker(topology)

    @classmethod
    def from_env(cls, *, source: str = "bus", topology: str | None = None) -> Outbox:
        """The topology from `BUS_TOPOLOGY` (or *topology*)."""
        return cls(load_topology(Settings.from_env(topology=topology).topology), source=source)

    def event(
        self,
        event_type: str,
        data: Any,
        *,
        id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        traceparent: str | None = None,
    ) -> Event:
        """A checked `Event`, as `Publisher` would build it. Raises UnknownEventType or
        InvalidEvent; data that is not JSON-serialisable raises InvalidEvent when written."""
        if id is not None and not id.strip():
            raise InvalidEvent(
                "the event id is empty: give a non-empty id, or none for a random one"
            )
        self._checker.check(event_type, data)
        kw: dict[str, Any] = {"id": id} if id is not None else {}
        return Event(
            type=event_type,
            data=data,
            source=self.source,
            correlation_id=correlation_id,
            causation_id=causation_id,
            traceparent=traceparent or tracing.current_traceparent() or new_traceparent(),
            **kw,
        )

    async def add(self, conn: Any, event_type: str, data: Any, **kw: Any) -> str:
        """Write one event with *conn*, inside its open transaction; returns the event id.

        Keywords as `Publisher.publish`: `id`, `correlation_id`, `causation_id`, `traceparent`.
        """
        event = self.event(event_type, data, **kw)
        kind = _kind(conn)
        if kind == "asyncpg":
            await conn.execute(insert_sql(Dialect.POSTGRES, "dollar"), *_values(event, True))
        elif kind == "sqlalchemy-async":
            from sqlalchemy import text

            dialect = _sqlalchemy_dialect(conn)
            values = _values(event, dialect is Dialect.POSTGRES)
            await conn.execute(
                text(insert_sql(dialect, "named")), dict(zip(COLUMNS, values, strict=True))
            )
        elif kind == "aiosqlite":
            await conn.execute(insert_sql(Dialect.SQLITE, "qmark"), _values(event, False))
        else:
            raise _unsupported(conn, "add", sync=kind in ("sqlalchemy-sync", "sqlite3"))
        return event.id

    def add_sync(self, conn: Any, event_type: str, data: Any, **kw: Any) -> str:
        """`add` for synchronous code: a SQLAlchemy `Connection`/`Session`, or `sqlite3`."""
        event = self.event(event_type, data, **kw)
        kind = _kind(conn)
        if kind == "sqlalchemy-sync":
            from sqlalchemy import text

            dialect = _sqlalchemy_dialect(conn)
            values = _values(event, dialect is Dialect.POSTGRES)
            conn.execute(
                text(insert_sql(dialect, "named")), dict(zip(COLUMNS, values, strict=True))
            )
        elif kind == "sqlite3":
            conn.execute(insert_sql(Dialect.SQLITE, "qmark"), _values(event, False))
        else:
            raise _unsupported(conn, "add_sync", sync=False)
        return event.id


def _values(event: Event, postgres: bool) -> tuple[Any, ...]:
    """The row, in `COLUMNS` order. SQLite keeps the time as RFC 3339 text."""
    created: Any = event.time if postgres else event.time.isoformat().replace("+00:00", "Z")
    return (
        event.id, event.type, dumps(event.data).decode(), event.source, event.correlation_id,
        event.causation_id, event.traceparent, created,
    )  # fmt: skip


def _kind(conn: Any) -> str:
    """What *conn* is, by its class's module: no optional driver is imported to find out."""
    if isinstance(conn, sqlite3.Connection):
        return "sqlite3"
    module = type(conn).__module__
    if module.startswith("asyncpg"):
        return "asyncpg"
    if module.startswith("aiosqlite"):
        return "aiosqlite"
    if module.startswith("sqlalchemy.ext.asyncio"):
        return "sqlalchemy-async"
    if module.startswith("sqlalchemy"):
        return "sqlalchemy-sync"
    return "unknown"


def _sqlalchemy_dialect(conn: Any) -> Dialect:
    bind = conn.get_bind() if hasattr(conn, "get_bind") else conn
    name = bind.dialect.name
    if name == "postgresql":
        return Dialect.POSTGRES
    if name == "sqlite":
        return Dialect.SQLITE
    raise ConfigError(f"the outbox supports PostgreSQL and SQLite, not {name}")


def _unsupported(conn: Any, method: str, *, sync: bool) -> ConfigError:
    hint = (
        "use outbox.add_sync(...) for a synchronous connection"
        if sync
        else "give an asyncpg or aiosqlite connection or a SQLAlchemy AsyncConnection/AsyncSession "
        "to add(); a SQLAlchemy Connection/Session or sqlite3 connection to add_sync()"
    )
    return ConfigError(f"Outbox.{method} cannot write with a {type(conn).__qualname__}: {hint}")
