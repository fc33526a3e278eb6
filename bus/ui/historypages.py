"""The history pages of `bus ui`: search an exchange's log, one event's story, replay.

`/history` searches by id, type (a pattern) or correlation id, in a time window; each result
links to `/history/{exchange}/events/{id}`: the event as published and where it stands for each
subscriber it reaches. Logged in, both pages replay: a window of history into one subscriber
(`/history/replay`, like `bus replay`), or one event into one subscriber.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from bus.errors import BusError
from bus.history import Selection
from bus.ui.api import backend_of
from bus.ui.eventstory import (
    check_exchange,
    find,
    published,
    reached,
    replay_into,
    search,
    standings,
    when_of,
)
from bus.ui.identity import form_operator
from bus.ui.pages import render

router = APIRouter(include_in_schema=False)
RESULTS = 100  # the newest this many matches are listed


def _back(path: str, done: str, **query: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?{urlencode({**query, 'done': done})}", status_code=303)


def event_path(exchange: str, id: str) -> str:
    return f"/history/{quote(exchange, safe='')}/events/{quote(id, safe='')}"


@router.get("/history", response_class=HTMLResponse)
async def history_page(
    request: Request,
    exchange: str | None = None,
    id: str = "",
    type: str = "",
    correlation_id: str = "",
    since: str = "",
    until: str = "",
) -> HTMLResponse:
    topology = backend_of(request).topology
    logs = [h.exchange for h in topology.histories()]
    exchange = exchange or (logs[0] if logs else None)
    form = {"exchange": exchange, "id": id, "type": type, "correlation_id": correlation_id,
            "since": since, "until": until}  # fmt: skip
    context: dict[str, Any] = {"logs": logs, "form": form, "events": None, "problem": None,
                               "subscribers": [s.name for s in topology.subscribers()]}  # fmt: skip
    searched = any((id, type, correlation_id, since, until))
    if exchange and searched:
        try:
            selection = Selection(
                since=when_of(since, "since"), until=when_of(until, "until"),
                types=tuple(t for t in type.split() if t), id=id or None,
                correlation_id=correlation_id or None,
            )  # fmt: skip
            context["events"] = await search(backend_of(request), exchange, selection, RESULTS)
        except BusError as exc:
            context["problem"] = str(exc)
    return render(request, "history.html", 400 if context["problem"] else 200,
                  results=RESULTS, event_path=event_path, **context)  # fmt: skip


@router.get("/history/{exchange}/events/{id}", response_class=HTMLResponse)
async def event_page(request: Request, exchange: str, id: str) -> HTMLResponse:
    backend = backend_of(request)
    check_exchange(backend.topology, exchange)
    entry = await find(backend, exchange, id)
    event = published(entry)
    where = await standings(backend, exchange, entry.event.type, entry.event.id)
    data = event["data"]
    pretty = json.dumps(data, indent=2, ensure_ascii=False) if not isinstance(data, str) else data
    subs = [s.name for s in reached(backend.topology, exchange, entry.event.type)]
    return render(request, "history_event.html", exchange=exchange, event=event, pretty=pretty,
                  standings=where, reached=subs, path=event_path(exchange, id))  # fmt: skip


@router.post("/history/replay")
async def replay_form(
    request: Request,
    csrf: str | None = Form(None),
    subscriber: str = Form(...),
    since: str = Form(""),
    until: str = Form(""),
    type: str = Form(""),
    id: str = Form(""),
    dry_run: str | None = Form(None),
    again: str | None = Form(None),
    back: str = Form("/history"),
) -> Response:
    who = form_operator(request, csrf)
    back = back if back.startswith("/history") else "/history"
    if not since and not id:
        return _back(back, "not replayed: give since (how far back)")
    try:
        selection = Selection(
            since=when_of(since, "since"), until=when_of(until, "until"),
            types=tuple(t for t in type.split() if t), id=id or None,
        )  # fmt: skip
        out = await replay_into(backend_of(request), subscriber, selection,
                                dry_run=dry_run is not None, again=again is not None,
                                who=who)  # fmt: skip
    except BusError as exc:
        return _back(back, f"not replayed: {exc}")
    verb = "would copy" if dry_run is not None else "copied"
    per_type = ", ".join(f"{t}: {n}" for t, n in sorted(out.per_type.items())) or "nothing"
    return _back(back, f"{verb} {out.total} event(s) into {subscriber} ({per_type})")
