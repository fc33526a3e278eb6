"""An event's story in `bus ui`: search the log by id, type or correlation id; one event's page
shows it as published and where it stands for each subscriber (handled, parked and why,
waiting for a retry, not handled yet); a logged-in operator replays it into one subscriber."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bus import Publisher
from bus.settings import Settings
from bus.stores import open_store
from bus.ui import UiConfig, create_app
from tests.conftest import wait_for
from tests.integration.helpers import applied, queue_depth, running
from tests.integration.history_kit import history_topology
from tests.integration.ui_kit import TOKEN, login
from tests.integration.ui_kit import ui_client as client
from tests.ui_handlers import HANDLERS, Mailer

pytestmark = pytest.mark.rabbitmq4

BEARER = {"Authorization": f"Bearer {TOKEN}", "X-Bus-Operator": "script"}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_event_page_shows_the_event_as_published_and_where_it_stands_per_subscriber(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topology = history_topology(
        prefix,
        {"email": {"keys": ["order.placed"], "handlers": HANDLERS}, "audit": {"keys": ["#"]}},
        delays=["1h"],
    )
    store_url = f"sqlite:///{tmp_path / 'processed.db'}"
    settings = Settings(url=amqp_url, outbox_url=f"sqlite:///{tmp_path / 'no-outbox.db'}",
                        store_url=store_url)  # fmt: skip
    app = create_app(UiConfig(settings, token=TOKEN, browse_ttl=0.2), topology)
    mailer = Mailer()
    store = await open_store(store_url)
    x = f"{prefix}.events"
    try:
        async with (
            applied(amqp_url, topology),
            running(amqp_url, topology, "email", mailer.router, store=store),
            Publisher(amqp_url, topology) as pub,
            client(app) as c,
        ):
            ok = {"order_id": "o-1", "email": "a@example.com"}
            await pub.publish("order.placed", ok, id="e-1", correlation_id="k",
                              traceparent=TRACEPARENT)  # fmt: skip
            await pub.publish("order.placed", {"order_id": "o-2"}, id="e-2", correlation_id="k")
            await wait_for(lambda: queue_depth(amqp_url, f"{prefix}.email.retry.1h"),
                           timeout=30, message="e-1 waits for its retry")  # fmt: skip
            await wait_for(lambda: queue_depth(amqp_url, f"{prefix}.email.dlq"),
                           timeout=30, message="e-2 parked")  # fmt: skip
            mailer.broken = False
            await pub.publish("order.placed", {**ok, "order_id": "o-3"}, id="e-3")
            await pub.publish("order.shipped", {"order_id": "o-3"}, id="e-4", correlation_id="k")
            await wait_for(lambda: [h.id for h in mailer.handled] == ["e-3"],
                           timeout=30, message="e-3 handled")  # fmt: skip

            async def where(id: str) -> dict[str, dict[str, object]]:
                r = await c.get(f"/api/history/{x}/events/{id}")
                assert r.status_code == 200, r.text
                return {s["subscriber"]: s for s in r.json()["subscribers"]}

            first = (await c.get(f"/api/history/{x}/events/e-1")).json()["event"]
            assert (first["id"], first["type"], first["correlation_id"]) == (
                "e-1",
                "order.placed",
                "k",
            )
            assert first["traceparent"] == TRACEPARENT and first["data"] == ok
            e1 = await where("e-1")
            assert e1["email"]["state"] == "retrying"
            assert e1["email"]["queue"] == f"{prefix}.email.retry.1h"
            assert e1["email"]["exception_type"] == "TimeoutError"
            assert e1["audit"]["state"] == "pending"  # nobody runs audit here
            e2 = (await where("e-2"))["email"]
            assert (e2["state"], e2["queue"], e2["reason"]) == (
                "parked",
                f"{prefix}.email.dlq",
                "invalid",
            )
            assert (await where("e-3"))["email"]["state"] == "handled"
            assert list(await where("e-4")) == ["audit"]  # email is not bound to order.shipped
            missing = await c.get(f"/api/history/{x}/events/nope")
            assert missing.status_code == 404

            # the pages: search by correlation id, by type, by id; the event's page
            found = await c.get("/history", params={"exchange": x, "correlation_id": "k"})
            assert re.findall(r'<tr data-id="([^"]+)"', found.text) == ["e-1", "e-2", "e-4"]
            by_type = await c.get("/history", params={"exchange": x, "type": "order.shipped"})
            assert re.findall(r'<tr data-id="([^"]+)"', by_type.text) == ["e-4"]
            by_id = await c.get("/history", params={"exchange": x, "id": "e-3"})
            assert f'href="/history/{x}/events/e-3"' in by_id.text
            bad = await c.get("/history", params={"exchange": x, "since": "yesterday"})
            assert bad.status_code == 400 and "neither a duration" in bad.text
            page = await c.get(f"/history/{x}/events/e-2")
            assert page.status_code == 200
            assert 'data-subscriber="email" data-state="parked"' in page.text
            assert "/subscribers/email/dlq/message?id=e-2" in page.text
            assert (
                "bus.InvalidMessage" in page.text
                and "&#34;order_id&#34;: &#34;o-2&#34;" in page.text
            )

            # replay one event into one subscriber: a form (logged in) and the API (token)
            audit = await queue_depth(amqp_url, f"{prefix}.audit")
            assert (await c.post("/history/replay", data={"subscriber": "audit", "id": "e-4"})
                    ).status_code == 401  # fmt: skip
            csrf = await login(c)
            done = await c.post("/history/replay", data={
                "csrf": csrf, "subscriber": "audit", "id": "e-4",
                "back": f"/history/{x}/events/e-4"})  # fmt: skip
            assert done.status_code == 303
            assert "copied 1 event(s) into audit (order.shipped: 1)" in (
                await c.get(done.headers["location"])
            ).text.replace("&#39;", "'")
            assert await queue_depth(amqp_url, f"{prefix}.audit") == audit + 1
            api = await c.post("/api/subscribers/audit/replay", json={"id": "e-1"}, headers=BEARER)
            assert api.json()["per_type"] == {"order.placed": 1}, api.text
            assert await queue_depth(amqp_url, f"{prefix}.audit") == audit + 2
            assert await queue_depth(amqp_url, f"{prefix}.email") == 0  # nothing else got it
    finally:
        await store.close()
