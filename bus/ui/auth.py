"""Who may change things: the Bearer token for scripts, a signed session cookie for people.

Stateless, keyed by `BUS_UI_TOKEN`: the login form checks the token once and sets an HttpOnly
cookie `<name>.<nonce>.<hmac>`; every form carries a CSRF token derived from that nonce, so a
page of another site cannot post with the operator's cookie. Changing the token logs everyone
out. Pure functions: the routes call them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

SESSION_COOKIE = "bus_ui_session"
SESSION_SECONDS = 12 * 3600
_NAME = re.compile(r"[^\w.@ -]")


@dataclass(frozen=True)
class Session:
    """A logged-in operator: the name they gave, and the nonce their CSRF token derives from."""

    who: str
    nonce: str


def _sign(token: str, text: str) -> str:
    return hmac.new(token.encode(), text.encode(), hashlib.sha256).hexdigest()


def clean_name(name: str) -> str:
    """The operator's name as logs and headers show it: short, printable, never empty."""
    return _NAME.sub("", name).strip()[:64] or "operator"


def token_matches(token: str | None, given: str | None) -> bool:
    """Constant-time comparison; always False when the UI has no token (read-only)."""
    if token is None or not given:
        return False
    return hmac.compare_digest(token.encode(), given.encode())


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def new_session(token: str, who: str) -> tuple[Session, str]:
    """A session for *who* and the cookie value that carries it."""
    session = Session(clean_name(who), secrets.token_hex(16))
    name = base64.urlsafe_b64encode(session.who.encode()).decode().rstrip("=")
    return session, f"{name}.{session.nonce}.{_sign(token, f'{session.who}|{session.nonce}')}"


def read_session(token: str | None, cookie: str | None) -> Session | None:
    """The session a cookie carries, when its signature holds under *token*."""
    if token is None or not cookie or cookie.count(".") != 2:
        return None
    name, nonce, signature = cookie.split(".")
    try:
        who = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    if not hmac.compare_digest(signature, _sign(token, f"{who}|{nonce}")):
        return None
    return Session(who, nonce)


def csrf_token(token: str, session: Session) -> str:
    """The token every form of this session must send back."""
    return _sign(token, f"csrf|{session.nonce}")


def csrf_matches(token: str | None, session: Session | None, given: str | None) -> bool:
    if token is None or session is None or not given:
        return False
    return hmac.compare_digest(csrf_token(token, session), given)
