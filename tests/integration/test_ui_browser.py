"""`bus ui` in a real headless Chromium (Debian's, driven by Playwright; never a downloaded
browser): the operator's 3 a.m. path from the overview to a replayed group and an edited
message. Screenshots of each page land in .bus/ui-screenshots/."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.conftest import wait_for
from tests.integration.helpers import queue_depth
from tests.integration.ui_kit import TOKEN, serving, three_parked

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / ".bus" / "ui-screenshots"
WAIT = 15_000  # ms: each expectation's deadline

pytestmark = [pytest.mark.rabbitmq4, pytest.mark.slow]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"no {CHROMIUM}: `apt-get install chromium` (.ci/run does)", pytrace=False)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_operator_replays_a_group_and_edits_an_invalid_message_in_the_browser(
    amqp_url: str, prefix: str, tmp_path: Path, browser: Browser
) -> None:
    async with (
        three_parked(amqp_url, prefix) as parked,
        serving(parked.app(amqp_url, tmp_path)) as base,
    ):
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        await page.goto(f"{base}/login")
        await page.fill("input[name=name]", "ada")
        await page.fill("input[name=token]", TOKEN)
        await page.get_by_role("button", name="log in").click()

        # the overview: a subscriber with 3 parked messages
        email = page.locator("tr[data-subscriber=email]")
        await expect(email.locator(".dlq-count")).to_have_text("3", timeout=WAIT)
        await expect(page.locator("header")).to_contain_text("signed in as ada")
        assert "guest:guest" not in await page.content()
        await shot(page, "overview")
        watcher = await context.new_page()  # stays on the overview: it must refresh by itself
        await watcher.goto(base)

        # its DLQ: two groups
        await email.locator(".dlq-count a").click()
        groups = page.locator("tr.group")
        await expect(groups).to_have_count(2, timeout=WAIT)
        timeout = page.locator("tr.group[data-group=TimeoutError]")
        await expect(timeout.locator(".group-count")).to_have_text("2")
        invalid = page.locator('tr.group[data-group="bus.InvalidMessage"]')
        await expect(invalid.locator(".group-count")).to_have_text("1")
        await shot(page, "dlq")

        # replay the TimeoutError group: the messages leave the DLQ and the handler runs
        parked.mailer.broken = False
        await timeout.locator("button", has_text="replay group").click()
        await expect(page.locator(".flash")).to_have_text("replayed 2 message(s)", timeout=WAIT)
        await expect(groups).to_have_count(1, timeout=WAIT)
        await expect(page.locator("#dlq-count")).to_have_text("1")
        await wait_for(lambda: {h.id for h in parked.mailer.handled} == {"e-1", "e-2"},
                       message="the replayed group handled")  # fmt: skip
        await shot(page, "dlq-after-group-replay")

        # the story of the message whose body failed validation
        await invalid.locator(".sample a").click()
        await expect(page.locator("#story")).to_contain_text("bus.InvalidMessage")
        await expect(page.locator("#story")).to_contain_text("invalid")
        await expect(page.locator("#body")).to_contain_text('"order_id": "o-3"')
        await expect(page.locator("#headers")).to_contain_text("bus-dead-reason")
        await shot(page, "message")

        # edit and replay: refused by the schema, then by the handler's model, then sent
        editor = page.locator("#edit textarea")
        await editor.fill('{"order_id": 3}')
        await page.get_by_role("button", name="validate and replay").click()
        await expect(page.locator("#problems")).to_contain_text("schema at order_id")
        await editor.fill('{"order_id": "o-3"}')
        await page.get_by_role("button", name="validate and replay").click()
        await expect(page.locator("#problems")).to_contain_text("model at email")
        await shot(page, "edit-refused")
        assert await queue_depth(amqp_url, parked.dlq) == 1, "nothing is sent while invalid"
        await editor.fill('{"order_id": "o-3", "email": "fixed@example.com"}')
        await page.get_by_role("button", name="validate and replay").click()
        await expect(page.locator(".flash")).to_have_text("edited and replayed e-3", timeout=WAIT)
        await expect(page.locator("#dlq")).to_contain_text("Nothing parked.")
        await wait_for(lambda: len(parked.mailer.handled) == 3, message="the edited e-3 handled")
        e3 = parked.mailer.handled[-1]
        assert (e3.id, e3.email, e3.attempt) == ("e-3", "fixed@example.com", 1)
        assert e3.headers["bus-edited-by"] == "ada (127.0.0.1)"
        await shot(page, "dlq-after-edit")

        # the overview left open has refreshed itself to an empty DLQ
        await expect(watcher.locator("tr[data-subscriber=email] .dlq-count")).to_have_text(
            "0", timeout=WAIT
        )
        await shot(watcher, "overview-after")
        await context.close()
