"""Which subscribers handled an event, read from the processed table (read-only).

The UI reads the table of its own `BUS_STORE_URL` (SQLite or PostgreSQL); subscribers whose
processes use another store are not seen there, and a store that cannot be read gives None
("unknown"), never an error page. Nothing is created or written.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from bus.stores import sql

log = logging.getLogger(__name__)

DONE, CLAIMED = "done", "claimed"


def _query(placeholders: Sequence[str], id_mark: str) -> str:
    return (
        f"SELECT subscriber, state FROM {sql.TABLE} "
        f"WHERE event_id = {id_mark} AND subscriber IN ({', '.join(placeholders)})"
    )


async def states(url: str, subscribers: Sequence[str], event_id: str) -> dict[str, str] | None:
    """{subscriber: "done" | "claimed"} for *event_id*, or None when the table is not readable."""
    if not subscribers:
        return {}
    scheme = urlsplit(url).scheme
    try:
        if scheme == "sqlite":
            return await _sqlite(url, subscribers, event_id)
        if scheme in ("postgresql", "postgres"):
            return await _postgres(url, subscribers, event_id)
    except Exception as exc:  # an unreadable store is "unknown" on the page, not a failure
        log.info("ui: processed table not readable (%s)", type(exc).__name__)
    return None


def _sqlite_uri(url: str) -> str | None:
    """`file:…?mode=ro` for a store URL's existing file (None: no such file)."""
    path = url.removeprefix("sqlite://")
    path = path[1:] if path.startswith("/") else path
    if not path or not Path(path).exists():
        return None
    return f"{Path(path).resolve().as_uri()}?mode=ro"


async def _sqlite(url: str, subscribers: Sequence[str], event_id: str) -> dict[str, str] | None:
    import aiosqlite

    uri = _sqlite_uri(url)
    if uri is None:
        return None
    async with aiosqlite.connect(uri, uri=True, timeout=5) as db:
        rows = await db.execute_fetchall(
            _query(["?"] * len(subscribers), "?"), (event_id, *subscribers)
        )
    return {str(r[0]): str(r[1]) for r in rows}


async def _postgres(url: str, subscribers: Sequence[str], event_id: str) -> dict[str, str]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        marks = [f"${i + 2}" for i in range(len(subscribers))]
        rows = await conn.fetch(_query(marks, "$1"), event_id, *subscribers)
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
    return {str(r["subscriber"]): str(r["state"]) for r in rows}
