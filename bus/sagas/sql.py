"""The saga statements, for SQLite (`?1`) and PostgreSQL (`$1`) alike."""

from __future__ import annotations

from bus.stores import sql as stores_sql
from bus.stores.sql import SAGA, SAGA_STEP, SAGA_TIMEOUT

_INSTANCE = "subscriber, saga, key, {state}, version, status, created_at, updated_at"


def statements(postgres: bool) -> dict[str, str]:
    """Name -> statement with the dialect's numbered parameters."""
    state_out = "state::text" if postgres else "state"
    state_in = "CAST({3} AS jsonb)" if postgres else "{3}"
    columns = _INSTANCE.format(state=state_out)
    raw = {
        "load": f"SELECT {columns} FROM {SAGA} WHERE subscriber = {{0}} AND saga = {{1}} "
        "AND key = {2}",
        "create": f"""INSERT INTO {SAGA} (subscriber, saga, key, state, version, status,
    created_at, updated_at) VALUES ({{0}}, {{1}}, {{2}}, {state_in}, 1, {{4}}, {{5}}, {{5}})
    ON CONFLICT (subscriber, saga, key) DO NOTHING RETURNING version""",
        "update": f"""UPDATE {SAGA} SET state = {state_in}, version = version + 1,
    status = {{4}}, updated_at = {{5}}
    WHERE subscriber = {{0}} AND saga = {{1}} AND key = {{2}} AND version = {{6}}
    RETURNING version""",
        "step": f"""INSERT INTO {SAGA_STEP} (subscriber, saga, key, version, event_id, type, at)
    VALUES ({{0}}, {{1}}, {{2}}, {{3}}, {{4}}, {{5}}, {{6}})""",
        "timeout": f"""INSERT INTO {SAGA_TIMEOUT} (id, subscriber, saga, key, type, data, due_at,
    correlation_id, causation_id) VALUES ({{0}}, {{1}}, {{2}}, {{3}}, {{4}}, {{5}}, {{6}},
    {{7}}, {{8}}) ON CONFLICT (id) DO NOTHING""",
        "processed": stores_sql.COMPLETE,
        "steps": f"""SELECT event_id, type, at, version FROM {SAGA_STEP}
    WHERE subscriber = {{0}} AND saga = {{1}} AND key = {{2}} ORDER BY version""",
        "pending": f"""SELECT t.id, t.type, t.due_at FROM {SAGA_TIMEOUT} t
    WHERE t.subscriber = {{0}} AND t.saga = {{1}} AND t.key = {{2}} AND NOT EXISTS (
        SELECT 1 FROM {SAGA_STEP} s WHERE s.subscriber = t.subscriber AND s.saga = t.saga
            AND s.key = t.key AND s.event_id = t.id)
    ORDER BY t.due_at""",
        "counts": f"SELECT saga, status, count(*) FROM {SAGA} WHERE subscriber = {{0}} "
        "GROUP BY saga, status",
        "unsent": f"""SELECT id, subscriber, type, data, due_at, correlation_id, causation_id
    FROM {SAGA_TIMEOUT} WHERE sent_at IS NULL ORDER BY due_at LIMIT {{0}}""",
        "sent": f"UPDATE {SAGA_TIMEOUT} SET sent_at = {{1}} WHERE id = {{0}}",
        "expired": f"""SELECT subscriber, saga, key FROM {SAGA}
    WHERE status = 'completed' AND updated_at < {{0}}""",
        "drop": f"DELETE FROM {SAGA} WHERE subscriber = {{0}} AND saga = {{1}} AND key = {{2}}",
        "drop_steps": f"DELETE FROM {SAGA_STEP} WHERE subscriber = {{0}} AND saga = {{1}} "
        "AND key = {2}",
        "drop_timeouts": f"DELETE FROM {SAGA_TIMEOUT} WHERE subscriber = {{0}} AND saga = {{1}} "
        "AND key = {2}",
    }
    mark = stores_sql.dollar if postgres else stores_sql.qmark
    return {name: mark(text, 10) for name, text in raw.items()}


def list_sql(postgres: bool) -> str:
    """`bus saga list`: newest first; a NULL saga or status means any."""
    state = "state::text" if postgres else "state"
    typed = "::text" if postgres else ""  # PostgreSQL cannot type a parameter only tested for NULL
    text = (
        f"SELECT {_INSTANCE.format(state=state)} FROM {SAGA} WHERE subscriber = {{0}} "
        f"AND ({{1}}{typed} IS NULL OR saga = {{1}}) AND ({{2}}{typed} IS NULL OR status = {{2}}) "
        "ORDER BY updated_at DESC LIMIT {3}"
    )
    return (stores_sql.dollar if postgres else stores_sql.qmark)(text, 4)
