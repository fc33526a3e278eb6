"""The `bus_outbox` table: the contract between any writer and `bus relay`.

A writer fills `id` (the event id, unique), `type` and `data` (JSON), and may fill `source`,
`correlation_id`, `causation_id`, `traceparent` and `created_at`; every other column has a
default, so a plain SQL `INSERT` from any language is a valid event. `seq` orders rows; on
PostgreSQL `txid` (the writing transaction, by default) lets relays claim whole transactions,
so that rows of one transaction are published in insert order. A row the relay cannot publish
(not JSON, undeclared type, schema failure, unroutable) is set aside: `failed_at` and `failure`
say when and why, and relays skip it until `bus outbox retry` clears them.

Pure data: the DDL and the dialect of a URL. Nothing here connects.
"""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import urlsplit

from bus.errors import ConfigError

TABLE = "bus_outbox"
CHANNEL = "bus_outbox"  # PostgreSQL NOTIFY channel: relays wake on it
DEFAULT_SOURCE = "outbox"

COLUMNS = (
    "id", "type", "data", "source", "correlation_id", "causation_id", "traceparent", "created_at",
)  # fmt: skip


class Dialect(StrEnum):
    POSTGRES = "postgresql"
    SQLITE = "sqlite"


POSTGRES_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             text NOT NULL UNIQUE,
    type           text NOT NULL,
    data           jsonb NOT NULL,
    source         text NOT NULL DEFAULT '{DEFAULT_SOURCE}',
    correlation_id text,
    causation_id   text,
    traceparent    text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    txid           bigint NOT NULL DEFAULT txid_current(),
    failed_at      timestamptz,
    failure        text
)""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_pending ON {TABLE} (seq) WHERE failed_at IS NULL",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_txid ON {TABLE} (txid)",
    f"""CREATE OR REPLACE FUNCTION {TABLE}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END $$""",
    # one NOTIFY per statement, delivered on commit: exactly when the rows become visible
    f"""DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgname = '{TABLE}_notify' AND tgrelid = '{TABLE}'::regclass) THEN
        CREATE TRIGGER {TABLE}_notify AFTER INSERT ON {TABLE}
            FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_notify();
    END IF;
END $$""",
)

SQLITE_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    type           TEXT NOT NULL,
    data           TEXT NOT NULL,
    source         TEXT NOT NULL DEFAULT '{DEFAULT_SOURCE}',
    correlation_id TEXT,
    causation_id   TEXT,
    traceparent    TEXT,
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    failed_at      TEXT,
    failure        TEXT
)""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_pending ON {TABLE} (seq) WHERE failed_at IS NULL",
    # SQLite relays take turns: the holder of this lease is the one relay publishing
    f"""CREATE TABLE IF NOT EXISTS {TABLE}_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL
)""",
)


def ddl(dialect: Dialect) -> tuple[str, ...]:
    """The statements `bus outbox init` runs, in order; each is idempotent."""
    return POSTGRES_DDL if dialect is Dialect.POSTGRES else SQLITE_DDL


def script(dialect: Dialect) -> str:
    """The DDL as one SQL script, for a migration tool (`bus outbox init --sql`)."""
    return "".join(f"{statement};\n\n" for statement in ddl(dialect)).rstrip() + "\n"


def dialect_of(url: str) -> Dialect:
    """`postgresql://…` (also `postgres://`, `postgresql+asyncpg://`) or `sqlite:///path`."""
    scheme = urlsplit(url).scheme.split("+")[0]
    if scheme in ("postgresql", "postgres"):
        return Dialect.POSTGRES
    if scheme == "sqlite":
        return Dialect.SQLITE
    raise ConfigError(
        f"BUS_OUTBOX_URL must be sqlite:///path or postgresql://…, got a {scheme or 'bare'} URL"
    )


def insert_sql(dialect: Dialect, style: str) -> str:
    """The writer's INSERT with placeholders in *style*: `dollar` ($1), `qmark` (?), `named`."""
    if style == "dollar":
        marks = [f"${i}" for i in range(1, len(COLUMNS) + 1)]
    elif style == "qmark":
        marks = ["?"] * len(COLUMNS)
    else:
        marks = [f":{c}" for c in COLUMNS]
    if dialect is Dialect.POSTGRES:
        marks[2] = f"CAST({marks[2]} AS jsonb)"
    return f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join(marks)})"
