"""The event log in the JSON API: search an exchange's history, replay into a subscriber.

`GET /api/history/{exchange}?since=&until=&type=&id=&correlation_id=&limit=` reads like
`bus history --json` (newest `limit` kept, oldest first); `POST /api/subscribers/{name}/replay`
with `{"since": "1h", "until": …, "types": […], "dry_run": false, "again": false}` does what
`bus replay` does, and needs `Authorization: Bearer $BUS_UI_TOKEN`.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from bus.errors import ConfigError, NoHistory
from bus.history import Selection, parse_when
from bus.history.reader import read_log
from bus.history.replay import replay as copy
from bus.history.select import without_history
from bus.ui.api import backend_of
from bus.ui.backend import NotFound
from bus.ui.identity import require_bearer

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api")


def _when(text: str | None, name: str) -> Any:
    if not text:
        return None
    try:
        return parse_when(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


@router.get("/history/{exchange}")
async def history(
    exchange: str,
    request: Request,
    since: str | None = None,
    until: str | None = None,
    type: list[str] = Query(default=[]),
    id: str | None = None,
    correlation_id: str | None = None,
    limit: int = Query(default=100, ge=1, le=10_000),
) -> dict[str, Any]:
    backend = backend_of(request)
    if exchange not in backend.topology.exchanges:
        raise NotFound(f"no exchange {exchange!r} in {backend.topology.source}")
    if backend.topology.history(exchange) is None:
        raise NoHistory(f"exchange {exchange!r} keeps no history")
    selection = Selection(
        since=_when(since, "since"), until=_when(until, "until"), types=tuple(type),
        id=id, correlation_id=correlation_id,
    )  # fmt: skip
    found: deque[dict[str, Any]] = deque(maxlen=limit)  # the newest `limit`, in log order
    async for entry in read_log(await backend.connection(), exchange, selection):
        found.append(entry.event.as_json())
    return {"exchange": exchange, "events": list(found)}


class HistoryReplay(BaseModel):
    since: str
    until: str | None = None
    types: list[str] = []
    dry_run: bool = False
    again: bool = False


@router.post("/subscribers/{name}/replay")
async def replay(
    name: str, body: HistoryReplay, request: Request, who: str = Depends(require_bearer)
) -> dict[str, Any]:
    backend = backend_of(request)
    sub = backend.subscriber(name)
    missing = without_history(backend.topology, sub)
    if missing:
        raise NoHistory(f"subscriber {name!r} is bound to {missing[0]!r}, which keeps no history")
    selection = Selection(
        since=_when(body.since, "since"), until=_when(body.until, "until"), types=tuple(body.types)
    )
    out = await copy(await backend.connection(), backend.topology, sub, selection,
                     dry_run=body.dry_run, again=body.again)  # fmt: skip
    log.info(
        "ui: %s replayed %d history event(s) into %s", who, out.total, sub.queue,
        extra={"who": who, "action": "history.replay", "subscriber": name,
               "dry_run": body.dry_run, "again": body.again},
    )  # fmt: skip
    return {"subscriber": name, "dry_run": body.dry_run, "copied": out.total,
            "per_type": dict(out.per_type)}  # fmt: skip
