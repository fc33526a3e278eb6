"""Who is asking, for the routes: the API's Bearer check, the forms' session and CSRF check."""

from __future__ import annotations

from fastapi import HTTPException, Request

from bus.ui.auth import (
    SESSION_COOKIE,
    Session,
    bearer,
    clean_name,
    csrf_matches,
    csrf_token,
    read_session,
    token_matches,
)
from bus.ui.config import UiConfig

OPERATOR_HEADER = "X-Bus-Operator"  # optional: the name a script's actions are logged under


def config_of(request: Request) -> UiConfig:
    config = request.app.state.config
    assert isinstance(config, UiConfig)
    return config


def client(request: Request) -> str:
    return request.client.host if request.client else "?"


def require_bearer(request: Request) -> str:
    """FastAPI dependency of the mutating API: who, or 401 without the right Bearer token."""
    config = config_of(request)
    if not token_matches(config.token, bearer(request.headers.get("authorization"))):
        why = (
            "read-only: BUS_UI_TOKEN is not set"
            if config.read_only
            else "Authorization: Bearer <BUS_UI_TOKEN> required"
        )
        raise HTTPException(401, why, headers={"WWW-Authenticate": "Bearer"})
    name = clean_name(request.headers.get(OPERATOR_HEADER) or "api")
    return f"{name} (bearer, {client(request)})"


def session_of(request: Request) -> Session | None:
    return read_session(config_of(request).token, request.cookies.get(SESSION_COOKIE))


def csrf_for(request: Request) -> str | None:
    """The CSRF token the forms of this page carry (None: not logged in)."""
    config, session = config_of(request), session_of(request)
    if config.token is None or session is None:
        return None
    return csrf_token(config.token, session)


def form_operator(request: Request, given_csrf: str | None) -> str:
    """Who posts a form: 401 without a session, 403 without its CSRF token."""
    config, session = config_of(request), session_of(request)
    if session is None:
        why = "read-only: BUS_UI_TOKEN is not set" if config.read_only else "log in first"
        raise HTTPException(401, why)
    if not csrf_matches(config.token, session, given_csrf):
        raise HTTPException(403, "refused: the form's CSRF token is missing or wrong")
    return f"{session.who} ({client(request)})"
