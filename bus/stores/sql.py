"""SQL shared by the SQLite and PostgreSQL stores (both speak ON CONFLICT … RETURNING)."""

TABLE = "bus_processed"

CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    subscriber    TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    state         TEXT NOT NULL,
    leased_until  DOUBLE PRECISION NOT NULL,
    updated_at    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (subscriber, event_id)
)
"""
CREATE_INDEX = f"CREATE INDEX IF NOT EXISTS {TABLE}_updated ON {TABLE} (updated_at)"

# Insert a claim, or take over an expired one; returns a row only when the claim is ours.
CLAIM = f"""
INSERT INTO {TABLE} (subscriber, event_id, state, leased_until, updated_at)
VALUES ({{0}}, {{1}}, 'claimed', {{2}}, {{3}})
ON CONFLICT (subscriber, event_id) DO UPDATE
    SET leased_until = excluded.leased_until, updated_at = excluded.updated_at
    WHERE {TABLE}.state = 'claimed' AND {TABLE}.leased_until < excluded.updated_at
RETURNING state
"""
STATE = f"SELECT state FROM {TABLE} WHERE subscriber = {{0}} AND event_id = {{1}}"
COMPLETE = f"""
INSERT INTO {TABLE} (subscriber, event_id, state, leased_until, updated_at)
VALUES ({{0}}, {{1}}, 'done', 0, {{2}})
ON CONFLICT (subscriber, event_id) DO UPDATE SET state = 'done', leased_until = 0,
    updated_at = excluded.updated_at
"""
RENEW = f"""UPDATE {TABLE} SET leased_until = {{2}}
WHERE subscriber = {{0}} AND event_id = {{1}} AND state = 'claimed'"""
RELEASE = f"DELETE FROM {TABLE} WHERE subscriber = {{0}} AND event_id = {{1}} AND state = 'claimed'"
PRUNE = f"DELETE FROM {TABLE} WHERE state = 'done' AND updated_at < {{0}}"


def qmark(sql: str, n: int) -> str:
    """SQLite's numbered parameters: `{2}` is the third argument wherever it stands (plain `?`
    would bind by position in the text, and RENEW names its lease before its key)."""
    return sql.format(*(f"?{i}" for i in range(1, n + 1)))


def dollar(sql: str, n: int) -> str:
    return sql.format(*(f"${i}" for i in range(1, n + 1)))
