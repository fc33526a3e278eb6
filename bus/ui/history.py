"""The event log in the JSON API: search an exchange's history, one event's story, replay into
a subscriber.

`GET /api/history/{exchange}?since=&until=&type=&id=&correlation_id=&limit=` reads like
`bus history --json` (newest `limit` kept, oldest first); `GET
/api/history/{exchange}/events/{id}` gives one event as published and where it stands for each
subscriber; `POST /api/subscribers/{name}/replay` with `{"since": "1h", "until": …, "types":
[…], "id": …, "dry_run": false, "again": false}` does what `bus replay` does, and needs
`Authorization: Bearer $BUS_UI_TOKEN`. The pages for people are in `bus.ui.historypages`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel

from bus.history import Selection
from bus.ui import historypages
from bus.ui.api import backend_of
from bus.ui.eventstory import check_exchange, find, replay_into, search, standings, when_of
from bus.ui.eventstory import published as published_of
from bus.ui.identity import require_bearer

api = APIRouter(prefix="/api")


@api.get("/history/{exchange}")
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
    selection = Selection(
        since=when_of(since, "since"), until=when_of(until, "until"), types=tuple(type),
        id=id, correlation_id=correlation_id,
    )  # fmt: skip
    events = await search(backend_of(request), exchange, selection, limit)
    return {"exchange": exchange, "events": events}


@api.get("/history/{exchange}/events/{id}")
async def event(
    exchange: str, id: str, request: Request, since: str | None = None
) -> dict[str, Any]:
    backend = backend_of(request)
    check_exchange(backend.topology, exchange)
    entry = await find(backend, exchange, id, when_of(since, "since"))
    where = await standings(backend, exchange, entry.event.type, entry.event.id)
    return {"exchange": exchange, "event": published_of(entry),
            "subscribers": [s.as_dict() for s in where]}  # fmt: skip


class HistoryReplay(BaseModel):
    since: str | None = None
    until: str | None = None
    types: list[str] = []
    id: str | None = None
    dry_run: bool = False
    again: bool = False


@api.post("/subscribers/{name}/replay")
async def replay(
    name: str, body: HistoryReplay, request: Request, who: str = Depends(require_bearer)
) -> dict[str, Any]:
    if body.since is None and body.id is None:
        raise HTTPException(422, 'give "since" (how far back), or "id" (one event)')
    selection = Selection(
        since=when_of(body.since, "since"), until=when_of(body.until, "until"),
        types=tuple(body.types), id=body.id,
    )  # fmt: skip
    out = await replay_into(backend_of(request), name, selection, dry_run=body.dry_run,
                            again=body.again, who=who)  # fmt: skip
    return {"subscriber": name, "dry_run": body.dry_run, "copied": out.total,
            "per_type": dict(out.per_type)}  # fmt: skip


router = APIRouter()  # what `bus ui` includes: the JSON API above and the pages
router.include_router(api)
router.include_router(historypages.router)
