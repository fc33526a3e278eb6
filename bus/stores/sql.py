"""SQL shared by the SQLite and PostgreSQL stores (both speak ON CONFLICT … RETURNING)."""

TABLE = "bus_processed"

CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    subscriber    TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    state         TEXT NOT NULL,
    leased_until  DOUBLE PRECISION NOT NULL,
    updated_at    DOUBLE PRECISION NOT NULL,
    owner         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (subscriber, event_id)
)
"""
# Tables made before claims named their owner (SQLite has no ADD COLUMN IF NOT EXISTS: the
# SQLite store checks first).
ADD_OWNER = f"ALTER TABLE {TABLE} ADD COLUMN owner TEXT NOT NULL DEFAULT ''"
ADD_OWNER_IF_MISSING = (
    f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS owner TEXT NOT NULL DEFAULT ''"
)
CREATE_INDEX = f"CREATE INDEX IF NOT EXISTS {TABLE}_updated ON {TABLE} (updated_at)"

# Insert a claim, or take over an expired one; returns a row only when the claim is ours.
CLAIM = f"""
INSERT INTO {TABLE} (subscriber, event_id, state, leased_until, updated_at, owner)
VALUES ({{0}}, {{1}}, 'claimed', {{2}}, {{3}}, {{4}})
ON CONFLICT (subscriber, event_id) DO UPDATE
    SET leased_until = excluded.leased_until, updated_at = excluded.updated_at,
        owner = excluded.owner
    WHERE {TABLE}.state = 'claimed' AND {TABLE}.leased_until < excluded.updated_at
RETURNING state
"""
STATE = f"SELECT state, owner FROM {TABLE} WHERE subscriber = {{0}} AND event_id = {{1}}"
# Take over the live lease of an owner found dead; only one of several claimers matches.
TAKE_OVER = f"""
UPDATE {TABLE} SET owner = {{2}}, leased_until = {{3}}, updated_at = {{4}}
WHERE subscriber = {{0}} AND event_id = {{1}} AND state = 'claimed' AND owner = {{5}}
RETURNING state
"""
COMPLETE = f"""
INSERT INTO {TABLE} (subscriber, event_id, state, leased_until, updated_at)
VALUES ({{0}}, {{1}}, 'done', 0, {{2}})
ON CONFLICT (subscriber, event_id) DO UPDATE SET state = 'done', leased_until = 0,
    updated_at = excluded.updated_at
"""
# Renew and release touch our own claim only: never a lease another replica took over.
RENEW = f"""UPDATE {TABLE} SET leased_until = {{2}}
WHERE subscriber = {{0}} AND event_id = {{1}} AND state = 'claimed' AND owner = {{3}}"""
RELEASE = f"""DELETE FROM {TABLE}
WHERE subscriber = {{0}} AND event_id = {{1}} AND state = 'claimed' AND owner = {{2}}"""
PRUNE = f"DELETE FROM {TABLE} WHERE state = 'done' AND updated_at < {{0}}"

# Keys of ordered subscribers held behind an event on the retry ladder (bus.ordering): written
# when an event goes to retry, deleted when it succeeds or parks, read when a replica takes a
# partition over.
HOLD_TABLE = "bus_hold"
CREATE_HOLDS = f"""
CREATE TABLE IF NOT EXISTS {HOLD_TABLE} (
    subscriber  TEXT NOT NULL,
    hold_key    TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    since       DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (subscriber, hold_key)
)
"""
HOLD = f"""
INSERT INTO {HOLD_TABLE} (subscriber, hold_key, event_id, since) VALUES ({{0}}, {{1}}, {{2}}, {{3}})
ON CONFLICT (subscriber, hold_key) DO UPDATE SET event_id = excluded.event_id
"""
UNHOLD = f"""DELETE FROM {HOLD_TABLE}
WHERE subscriber = {{0}} AND hold_key = {{1}} AND event_id = {{2}}"""
HOLDS = f"SELECT hold_key, event_id, since FROM {HOLD_TABLE} WHERE subscriber = {{0}}"


def qmark(sql: str, n: int) -> str:
    """SQLite's numbered parameters: `{2}` is the third argument wherever it stands (plain `?`
    would bind by position in the text, and RENEW names its lease before its key)."""
    return sql.format(*(f"?{i}" for i in range(1, n + 1)))


def dollar(sql: str, n: int) -> str:
    return sql.format(*(f"${i}" for i in range(1, n + 1)))


# Sagas (bus.sagas): one row per instance, one per step it ran, one per timeout it set. Made
# with the processed table, in the same database, so that a step commits its state, its
# processed mark and its outbox rows in one transaction.
SAGA = "bus_saga"
SAGA_STEP = "bus_saga_step"
SAGA_TIMEOUT = "bus_saga_timeout"


def saga_ddl(json_type: str) -> tuple[str, ...]:
    """The saga tables; *json_type* is `jsonb` on PostgreSQL, `TEXT` on SQLite."""
    return (
        f"""CREATE TABLE IF NOT EXISTS {SAGA} (
    subscriber  TEXT NOT NULL,
    saga        TEXT NOT NULL,
    key         TEXT NOT NULL,
    state       {json_type} NOT NULL,
    version     BIGINT NOT NULL,
    status      TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (subscriber, saga, key)
)""",
        f"CREATE INDEX IF NOT EXISTS {SAGA}_status ON {SAGA} (status, updated_at)",
        f"""CREATE TABLE IF NOT EXISTS {SAGA_STEP} (
    subscriber  TEXT NOT NULL,
    saga        TEXT NOT NULL,
    key         TEXT NOT NULL,
    version     BIGINT NOT NULL,
    event_id    TEXT NOT NULL,
    type        TEXT NOT NULL,
    at          DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (subscriber, saga, key, version)
)""",
        f"""CREATE TABLE IF NOT EXISTS {SAGA_TIMEOUT} (
    id             TEXT PRIMARY KEY,
    subscriber     TEXT NOT NULL,
    saga           TEXT NOT NULL,
    key            TEXT NOT NULL,
    type           TEXT NOT NULL,
    data           TEXT NOT NULL,
    due_at         DOUBLE PRECISION NOT NULL,
    correlation_id TEXT,
    causation_id   TEXT,
    sent_at        DOUBLE PRECISION
)""",
        f"CREATE INDEX IF NOT EXISTS {SAGA_TIMEOUT}_unsent ON {SAGA_TIMEOUT} (due_at) "
        "WHERE sent_at IS NULL",
    )
