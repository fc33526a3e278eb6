"""Count every event (bound to `#`) per type and hour, in batches; write the daily report.

`ANALYTICS_DB_URL`: `sqlite:///.bus/analytics.db` (default) or `postgresql://…`.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from bus import BatchContext, Context, Router
from subscribers.analytics.db import Counts, open_counts

router = Router()
_open: dict[str, Counts] = {}
_lock = asyncio.Lock()


async def counts() -> Counts:
    """The database of this process, opened on first use (keyed by URL, so tests may switch)."""
    url = os.environ.get("ANALYTICS_DB_URL", "sqlite:///.bus/analytics.db")
    async with _lock:
        if url not in _open:
            _open[url] = await open_counts(url)
        return _open[url]


@router.on_shutdown
async def close_databases() -> None:
    while _open:
        _, db = _open.popitem()
        await db.close()


@router.on("report.daily_requested")
async def daily_report(event: dict[str, Any], ctx: Context) -> None:
    """Roll up yesterday's counts (the scheduler fires this at 02:00 UTC)."""
    when = ctx.time or datetime.now(UTC)
    day = str(event.get("day") or (when - timedelta(days=1)).date().isoformat())
    db = await counts()
    await db.record(ctx.id, ctx.type, when)
    total = await db.write_report(day, datetime.now(UTC))
    ctx.log.info("daily report for %s: %d events", day, total)


@router.on("#", batch=500, flush="1s")
async def count(events: list[Any], ctx: BatchContext) -> None:
    """Up to 500 events a call, counted in one transaction (bench/analytics_batch.py)."""
    db = await counts()
    now = datetime.now(UTC)
    await db.record_many([(c.id, c.type, c.time or now) for c in ctx.contexts])
