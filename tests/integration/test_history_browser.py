"""An event's story in a real headless Chromium (Debian's, driven by Playwright): from the
history link in the header to a search by correlation id, to the page of an event parked in a
subscriber's DLQ, to that DLQ's story of it, then a replay of the event into another subscriber."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from bus import Publisher
from bus.settings import Settings
from bus.ui import UiConfig, create_app
from tests.conftest import wait_for
from tests.integration.helpers import applied, queue_depth, running
from tests.integration.history_kit import history_topology
from tests.integration.test_ui_browser import WAIT, browser, shot
from tests.integration.ui_kit import TOKEN, serving
from tests.ui_handlers import HANDLERS, Mailer

pytestmark = [pytest.mark.rabbitmq4, pytest.mark.slow]
__all__ = ["browser"]  # the fixture


async def test_operator_follows_a_parked_event_from_history_to_its_dlq_story_and_replays_it(
    amqp_url: str, prefix: str, tmp_path: Path, browser: Browser
) -> None:
    topology = history_topology(
        prefix,
        {"email": {"keys": ["order.placed"], "handlers": HANDLERS}, "audit": {"keys": ["#"]}},
        delays=["1h"],
    )
    settings = Settings(url=amqp_url, outbox_url=f"sqlite:///{tmp_path / 'no-outbox.db'}",
                        store_url=f"sqlite:///{tmp_path / 'processed.db'}")  # fmt: skip
    app = create_app(UiConfig(settings, token=TOKEN, browse_ttl=0.2), topology)
    x = f"{prefix}.events"
    async with (
        applied(amqp_url, topology),
        running(amqp_url, topology, "email", Mailer().router),
        serving(app) as base,
    ):
        async with Publisher(amqp_url, topology) as pub:
            await pub.publish("order.placed", {"order_id": "o-1"}, id="h-1", correlation_id="c")
            await pub.publish("order.shipped", {"order_id": "o-1"}, id="h-2", correlation_id="c")
        await wait_for(lambda: queue_depth(amqp_url, f"{prefix}.email.dlq"), timeout=30,
                       message="h-1 parked")  # fmt: skip
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        await page.goto(f"{base}/login")
        await page.fill("input[name=name]", "ada")
        await page.fill("input[name=token]", TOKEN)
        await page.get_by_role("button", name="log in").click()

        await page.locator("header").get_by_role("link", name="history").click()
        await page.select_option("#search select[name=exchange]", x)
        await page.fill("#search input[name=correlation_id]", "c")
        await page.get_by_role("button", name="search").click()
        rows = page.locator("#events tr[data-id]")
        await expect(rows).to_have_count(2, timeout=WAIT)
        await shot(page, "history-search")

        await page.locator("#events tr[data-id=h-1] a").click()
        await expect(page.locator("#envelope")).to_contain_text("order.placed", timeout=WAIT)
        await expect(page.locator("#data")).to_contain_text('"order_id": "o-1"')
        email = page.locator("#standings tr[data-subscriber=email]")
        await expect(email).to_have_attribute("data-state", "parked")
        await expect(email).to_contain_text("bus.InvalidMessage")
        await expect(page.locator("#standings tr[data-subscriber=audit]")).to_have_attribute(
            "data-state", "unknown"
        )  # this UI's store file does not exist: the table is not readable from here
        await shot(page, "history-event")

        audit = await queue_depth(amqp_url, f"{prefix}.audit")
        await page.select_option("#replay select[name=subscriber]", "audit")
        await page.locator("#replay").get_by_role("button", name="replay").click()
        await expect(page.locator(".flash")).to_contain_text("copied 1 event(s) into audit",
                                                             timeout=WAIT)  # fmt: skip
        assert await queue_depth(amqp_url, f"{prefix}.audit") == audit + 1

        await email.locator("a").click()
        await expect(page.locator("#story")).to_contain_text("bus.InvalidMessage", timeout=WAIT)
        await shot(page, "history-event-dlq-story")
        await context.close()
