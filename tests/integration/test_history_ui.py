"""The event log in `bus ui`'s JSON API: search by type, id and correlation id; replay into
one subscriber only with the token."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus import Publisher
from bus.settings import Settings
from bus.ui import UiConfig, create_app
from tests.integration.helpers import applied, queue_depth
from tests.integration.history_kit import history_topology
from tests.integration.ui_kit import TOKEN
from tests.integration.ui_kit import ui_client as client

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

BEARER = {"Authorization": f"Bearer {TOKEN}", "X-Bus-Operator": "script"}


async def test_api_searches_history_and_replays_with_the_token(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topology = history_topology(
        prefix, {"email": {"keys": ["order.placed"]}, "audit": {"keys": ["#"]}}
    )
    settings = Settings(url=amqp_url, outbox_url=f"sqlite:///{tmp_path / 'no-outbox.db'}")
    app = create_app(UiConfig(settings, token=TOKEN, browse_ttl=0.2), topology)
    async with applied(amqp_url, topology), client(app) as c:
        async with Publisher(amqp_url, topology) as pub:
            await pub.publish("order.placed", {"order_id": "1"}, id="u-1", correlation_id="k")
            await pub.publish("order.shipped", {"order_id": "1"}, id="u-2", correlation_id="k")
            await pub.publish("order.placed", {"order_id": "2"}, id="u-3")
        exchange = f"{prefix}.events"
        by_type = (await c.get(f"/api/history/{exchange}", params={"type": "order.placed"})).json()
        assert [e["id"] for e in by_type["events"]] == ["u-1", "u-3"]
        by_id = (await c.get(f"/api/history/{exchange}", params={"id": "u-2"})).json()
        assert [e["type"] for e in by_id["events"]] == ["order.shipped"]
        corr = (await c.get(f"/api/history/{exchange}", params={"correlation_id": "k"})).json()
        assert [e["id"] for e in corr["events"]] == ["u-1", "u-2"]
        newest = (await c.get(f"/api/history/{exchange}", params={"limit": 1})).json()
        assert [e["id"] for e in newest["events"]] == ["u-3"]

        body = {"since": "1h"}
        refused = await c.post("/api/subscribers/email/replay", json=body)
        assert refused.status_code == 401
        audit = await queue_depth(amqp_url, f"{prefix}.audit")
        dry = await c.post("/api/subscribers/email/replay", json={**body, "dry_run": True},
                           headers=BEARER)  # fmt: skip
        assert dry.json()["copied"] == 2 and await queue_depth(amqp_url, f"{prefix}.email") == 2
        done = await c.post("/api/subscribers/email/replay", json=body, headers=BEARER)
        assert done.json()["per_type"] == {"order.placed": 2}, done.text
        assert await queue_depth(amqp_url, f"{prefix}.email") == 4
        assert await queue_depth(amqp_url, f"{prefix}.audit") == audit == 3
        bad = await c.get(f"/api/history/{exchange}", params={"since": "yesterday"})
        assert bad.status_code == 400
