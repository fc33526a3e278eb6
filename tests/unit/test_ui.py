"""`bus ui` without a broker: tokens, sessions and CSRF, the bind rule, edit checks, grouping,
and the HTTP refusals that come before any broker is asked (httpx over ASGI)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from bus.cli import app as cli_app
from bus.errors import ConfigError
from bus.ops.dlq import parked
from bus.produce.validation import EventChecker
from bus.settings import Settings
from bus.topology.model import Topology, from_dict
from bus.ui import UiConfig, check_bind, create_app
from bus.ui.app import age, broker_label
from bus.ui.auth import (
    csrf_matches,
    csrf_token,
    new_session,
    read_session,
    token_matches,
)
from bus.ui.browse import group
from bus.ui.config import is_loopback
from bus.ui.edit import check_edit
from tests.ui_handlers import HANDLERS, Mailer

TOKEN = "t0ken-for-tests"
URL = "amqp://ops:pa55w0rd-never-shown@127.0.0.1:1/"  # nothing listens on port 1


def topology() -> Topology:
    return from_dict(
        {
            "version": 1,
            "exchanges": {"events": {"type": "topic"}},
            "events": {
                "order.placed": {
                    "exchange": "events",
                    "schema": {"type": "object", "required": ["order_id"],
                               "properties": {"order_id": {"type": "string"}}},
                }
            },
            "subscribers": {
                "email": {"handlers": HANDLERS,
                          "bindings": [{"exchange": "events", "keys": ["order.placed"]}]}
            },
        },
        source="test",
    )  # fmt: skip


@contextlib.asynccontextmanager
async def client(token: str | None = TOKEN) -> AsyncIterator[httpx.AsyncClient]:
    """httpx over ASGI (no lifespan runs: the backend is closed here)."""
    config = UiConfig(Settings(url=URL, outbox_url="sqlite:///.bus/no-such-outbox.db"), token=token)
    app = create_app(config, topology())
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c
    finally:
        await app.state.backend.close()


# --- tokens, sessions, CSRF -------------------------------------------------------------------


def test_a_session_cookie_round_trips_and_a_tampered_one_is_refused() -> None:
    session, cookie = new_session(TOKEN, "Ada <script>")
    assert session.who == "Ada script", "names are cleaned before they reach logs and headers"
    assert read_session(TOKEN, cookie) == session
    name, nonce, sig = cookie.split(".")
    assert read_session(TOKEN, f"{name}.{nonce}.{'0' * len(sig)}") is None
    assert read_session("another-token", cookie) is None, "a new token logs everyone out"
    assert read_session(None, cookie) is None, "read-only: no sessions at all"


def test_csrf_token_belongs_to_its_session() -> None:
    mine, _ = new_session(TOKEN, "ada")
    theirs, _ = new_session(TOKEN, "bob")
    assert csrf_matches(TOKEN, mine, csrf_token(TOKEN, mine))
    assert not csrf_matches(TOKEN, mine, csrf_token(TOKEN, theirs))
    assert not csrf_matches(TOKEN, mine, None)


def test_no_token_matches_when_the_ui_has_none() -> None:
    assert token_matches(TOKEN, TOKEN)
    assert not token_matches(TOKEN, "wrong")
    assert not token_matches(None, "")
    assert not token_matches(None, "anything")


# --- binding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_may_be_bound_without_a_token(host: str) -> None:
    assert is_loopback(host)
    check_bind(host, UiConfig(Settings()))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "ui.example.com"])
def test_anything_else_needs_the_token(host: str) -> None:
    with pytest.raises(ConfigError, match="BUS_UI_TOKEN"):
        check_bind(host, UiConfig(Settings()))
    check_bind(host, UiConfig(Settings(), token=TOKEN))


def test_bus_ui_refuses_a_public_bind_without_token_with_exit_2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bus.cli import main

    monkeypatch.delenv("BUS_UI_TOKEN", raising=False)
    monkeypatch.setattr("sys.argv", ["bus", "ui", "--host", "0.0.0.0", "--port", "1"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2


def test_bus_ui_is_a_command() -> None:
    result = CliRunner().invoke(cli_app, ["ui", "--help"])
    assert result.exit_code == 0 and "--port" in result.output and "--host" in result.output


def test_the_broker_label_never_holds_credentials() -> None:
    assert broker_label(URL) == "amqp://127.0.0.1:1/"
    assert broker_label("amqps://u:p@r1,r2:5673/prod") == "amqps://r1,r2:5673/prod"


def test_ages_read_like_people_say_them() -> None:
    assert [age(s) for s in (0.4, 42, 303, 7800, 270000)] == ["0.4s", "42s", "5m 03s", "2h 10m",
                                                                "3d 3h"]  # fmt: skip


# --- edit checks, grouping ----------------------------------------------------------------------


def test_an_edited_body_must_pass_json_the_schema_and_the_handler_model() -> None:
    checker, router = EventChecker(topology()), Mailer().router
    assert check_edit(checker, router, "order.placed", "{nope").problems[0].startswith("not JSON")
    schema = check_edit(checker, router, "order.placed", '{"order_id": 5}')
    assert not schema.ok and "schema at order_id" in schema.problems[0], schema
    model = check_edit(checker, router, "order.placed", '{"order_id": "o-1"}')
    assert not model.ok and "mailer.confirm's model at email" in model.problems[0], model
    good = check_edit(checker, router, "order.placed", '{"order_id": "o-1", "email": "a@b.c"}')
    assert good.ok and good.body == b'{"order_id":"o-1","email":"a@b.c"}'


def _parked(id: str, exc: str, at: str) -> Any:
    headers = {"bus-exception-type": exc, "bus-failed-at": at, "bus-dead-reason": "rejected"}
    return parked(id, "order.placed", headers, b"{}")


def test_groups_count_and_span_their_messages_largest_first() -> None:
    groups = group([
        _parked("a", "ValueError", "2026-12-01T10:00:00Z"),
        _parked("b", "TimeoutError", "2026-12-01T09:00:00Z"),
        _parked("c", "TimeoutError", "2026-12-01T11:00:00Z"),
        parked("d", "order.placed", {"x-death": [{"reason": "delivery_limit"}]}, b"{}"),
    ])  # fmt: skip
    assert [(g.key, g.count) for g in groups] == [
        ("TimeoutError", 2), ("ValueError", 1), ("delivery-limit", 1)
    ]  # fmt: skip
    assert (groups[0].first_seen, groups[0].last_seen) == (
        "2026-12-01T09:00:00Z", "2026-12-01T11:00:00Z"
    )  # fmt: skip
    assert groups[0].sample.id == "b"


def test_a_browse_is_reused_while_the_depth_holds_and_never_reread_within_the_ttl() -> None:
    import time

    from bus.ui.browse import Browse, BrowseCache

    cache = BrowseCache(limit=10, ttl=5.0, max_age=60.0)
    cache._entries["q"] = Browse("q", 7, (), 7, 0.1, at=time.monotonic() - 10)
    assert cache._fresh("q", 7) is not None, "same depth, younger than max_age: reused"
    assert cache._fresh("q", 8) is None, "the depth moved and the ttl passed: browse again"
    cache._entries["q"] = Browse("q", 7, (), 7, 0.1, at=time.monotonic() - 1)
    assert cache._fresh("q", 8) is not None, "within the ttl whatever the depth: one browse"
    cache._entries["q"] = Browse("q", 7, (), 7, 0.1, at=time.monotonic() - 61)
    assert cache._fresh("q", 7) is None, "older than max_age: browse again"
    cache.forget("q")
    assert cache._fresh("q", 7) is None


# --- HTTP: refusals before any broker is asked -------------------------------------------------


MUTATIONS = [
    ("/api/subscribers/email/dlq/replay", {"all": True}),
    ("/api/subscribers/email/dlq/replay", {"ids": ["e-1"]}),
    ("/api/subscribers/email/dlq/purge", None),
    ("/api/subscribers/email/dlq/edit", {"id": "e-1", "data": {}}),
]


@pytest.mark.parametrize(("path", "body"), MUTATIONS)
async def test_mutating_api_calls_without_the_token_get_401(path: str, body: Any) -> None:
    async with client() as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = await c.post(path, json=body, headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
    async with client(token=None) as c:  # read-only: no token opens it
        r = await c.post(path, json=body, headers={"Authorization": "Bearer "})
        assert r.status_code == 401 and "read-only" in r.json()["detail"]


async def _login(c: httpx.AsyncClient) -> None:
    r = await c.post("/login", data={"token": TOKEN, "name": "ada"})
    assert r.status_code == 303, r.text
    assert "httponly" in r.headers["set-cookie"].lower()


async def test_a_form_post_without_its_csrf_token_is_refused() -> None:
    async with client() as c:
        r = await c.post("/subscribers/email/dlq/purge", data={"confirm": "email"})
        assert r.status_code == 401, "no session: log in first"
        await _login(c)
        for data in ({"confirm": "email"}, {"confirm": "email", "csrf": "forged"}):
            r = await c.post("/subscribers/email/dlq/purge", data=data)
            assert r.status_code == 403 and "CSRF" in r.text, r.text
        r = await c.post("/subscribers/email/dlq/replay", data={"action": "all"})
        assert r.status_code == 403


async def test_a_wrong_login_is_refused_and_sets_no_cookie() -> None:
    async with client() as c:
        r = await c.post("/login", data={"token": "guess", "name": "mallory"})
        assert r.status_code == 401 and "set-cookie" not in r.headers
    async with client(token=None) as c:
        r = await c.post("/login", data={"token": "", "name": "mallory"})
        assert r.status_code == 401


async def test_pages_never_show_the_broker_password_even_when_it_is_unreachable() -> None:
    async with client() as c:
        await _login(c)
        for path in ("/", "/subscribers/email/dlq", "/subscribers/email/dlq/message?id=x",
                     "/api/status", "/api/subscribers/email/dlq", "/login", "/nowhere"):  # fmt: skip
            r = await c.get(path)
            assert "pa55w0rd-never-shown" not in r.text, f"{path} shows the password"
        r = await c.get("/")
        assert r.status_code == 503 and "cannot reach RabbitMQ" in r.text


async def test_static_files_and_health_are_served() -> None:
    async with client() as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        js = await c.get("/static/htmx.min.js")
        assert js.status_code == 200 and "htmx" in js.text[:100]
        r = await c.get("/login")
        assert re.search(r'name="token" type="password"', r.text)


def test_instants_are_shown_to_the_second() -> None:
    from bus.ui.app import when

    assert when("2026-12-01T07:34:21.724191Z") == "2026-12-01 07:34:21Z"
    assert when("") == "-" and when("yesterday") == "yesterday"


def test_the_ui_json_gives_attempts_as_a_number() -> None:
    from bus.ops.dlq import Parked
    from bus.ui.api import story
    from bus.ui.browse import Summary

    parked = Parked("e-1", "order.placed", "retries-exhausted", "3", "TimeoutError", "slow",
                    "2026-01-01T00:00:00Z", "", {}, b"{}")  # fmt: skip
    unknown = Parked(**{**parked.__dict__, "attempts": "?"})
    assert Summary.of(parked).as_dict()["attempts"] == 3
    assert story(parked)["attempts"] == 3
    assert Summary.of(unknown).as_dict()["attempts"] is None
    assert story(unknown)["attempts"] is None
