"""The pages for people: overview, a subscriber's DLQ, one message's story, the login form.

Server-rendered (Jinja); htmx re-fetches the live parts. Forms post, then redirect back
(303) with what was done in the query string, so a reload never repeats an action.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from bus.ui.api import backend_of, story
from bus.ui.auth import SESSION_COOKIE, SESSION_SECONDS, clean_name, new_session, token_matches
from bus.ui.backend import Selection
from bus.ui.identity import client, config_of, csrf_for, form_operator, session_of

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)
MESSAGES_PER_GROUP = 50


def templates_of(request: Request) -> Jinja2Templates:
    t = request.app.state.templates
    assert isinstance(t, Jinja2Templates)
    return t


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    config, session = config_of(request), session_of(request)
    base = {
        "topology": backend_of(request).topology.source,
        "broker": request.app.state.broker_label,
        "read_only": config.read_only,
        "who": session.who if session else None,
        "csrf": csrf_for(request),
        "done": request.query_params.get("done"),
    }
    return templates_of(request).TemplateResponse(
        request, template, {**base, **context}, status_code=status_code
    )


def back(path: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?{urlencode({'done': done})}", status_code=303)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request) -> HTMLResponse:
    return render(request, "overview.html", status=await backend_of(request).status())


@router.get("/fragments/overview", response_class=HTMLResponse)
async def overview_fragment(request: Request) -> HTMLResponse:
    return render(request, "_overview.html", status=await backend_of(request).status())


async def _dlq_context(request: Request, name: str) -> dict[str, Any]:
    backend = backend_of(request)
    return {"name": name, "sub": backend.subscriber(name), "browse": await backend.dlq(name),
            "per_group": MESSAGES_PER_GROUP}  # fmt: skip


@router.get("/subscribers/{name}/dlq", response_class=HTMLResponse)
async def dlq_page(request: Request, name: str) -> HTMLResponse:
    return render(request, "dlq.html", **await _dlq_context(request, name))


@router.get("/subscribers/{name}/dlq/fragment", response_class=HTMLResponse)
async def dlq_fragment(request: Request, name: str) -> HTMLResponse:
    return render(request, "_groups.html", **await _dlq_context(request, name))


@router.get("/subscribers/{name}/dlq/message", response_class=HTMLResponse)
async def message_page(request: Request, name: str, id: str) -> HTMLResponse:
    p = await backend_of(request).story(name, id)
    return _story(request, name, p.id, story(p), None, ())


def _story(
    request: Request, name: str, id: str, s: dict[str, Any], text: str | None,
    problems: tuple[str, ...], status_code: int = 200,
) -> HTMLResponse:  # fmt: skip
    body = s["body"]
    pretty = json.dumps(body, indent=2, ensure_ascii=False) if not isinstance(body, str) else body
    headers = {k: v for k, v in s["headers"].items() if k != "bus-exception-stacktrace"}
    return render(request, "message.html", status_code, name=name, id=id, story=s,
                  headers=headers, pretty=pretty, text=text if text is not None else pretty,
                  problems=problems)  # fmt: skip


@router.post("/subscribers/{name}/dlq/replay")
async def replay_form(
    request: Request,
    name: str,
    csrf: str | None = Form(None),
    id: list[str] = Form([]),
    one: str | None = Form(None),
    group: str | None = Form(None),
    action: str | None = Form(None),
    rate: str | None = Form(None),
) -> Response:
    who = form_operator(request, csrf)
    if one is not None:
        selection = Selection(ids=[one])
    elif group is not None:
        selection = Selection(group=group)
    elif action == "all":
        selection = Selection()
    elif action == "selected" and id:
        selection = Selection(ids=id)
    else:
        return back(f"/subscribers/{name}/dlq", "nothing selected: nothing replayed")
    done, missing = await backend_of(request).replay(name, selection, who=who, rate=_rate(rate))
    text = f"replayed {len(done)} message(s)"
    if missing:
        text += f"; not in the DLQ any more: {', '.join(missing)}"
    return back(f"/subscribers/{name}/dlq", text)


def _rate(text: str | None) -> float | None:
    """Messages per second from the form; empty, zero or nonsense: as fast as confirms go."""
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if value > 0 else None


@router.post("/subscribers/{name}/dlq/purge")
async def purge_form(
    request: Request, name: str, csrf: str | None = Form(None), confirm: str = Form("")
) -> Response:
    who = form_operator(request, csrf)
    if confirm.strip() != name:
        return back(f"/subscribers/{name}/dlq", f"not purged: type {name!r} to confirm")
    count = await backend_of(request).purge(name, who=who)
    return back(f"/subscribers/{name}/dlq", f"purged {count} message(s)")


@router.post("/subscribers/{name}/dlq/edit")
async def edit_form(
    request: Request, name: str, id: str = Form(...), body: str = Form(...),
    csrf: str | None = Form(None),
) -> Response:  # fmt: skip
    who = form_operator(request, csrf)
    backend = backend_of(request)
    checked = await backend.edit_and_replay(name, id, body, who=who)
    if not checked.ok:
        p = await backend.story(name, id)
        return _story(request, name, id, story(p), body, checked.problems, 422)
    return back(f"/subscribers/{name}/dlq", f"edited and replayed {id}")


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", failed=False)


@router.post("/login")
async def login(request: Request, token: str = Form(""), name: str = Form("")) -> Response:
    config = config_of(request)
    if config.token is None or not token_matches(config.token, token):
        log.warning("ui: failed login as %r from %s", clean_name(name), client(request))
        return render(request, "login.html", 401, failed=True)
    session, cookie = new_session(config.token, name)
    log.info("ui: %s logged in from %s", session.who, client(request),
             extra={"who": session.who, "action": "login"})  # fmt: skip
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE, cookie, max_age=SESSION_SECONDS, httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


@router.post("/logout")
async def logout(request: Request, csrf: str | None = Form(None)) -> Response:
    who = form_operator(request, csrf)
    log.info("ui: %s logged out", who, extra={"who": who, "action": "logout"})
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response
