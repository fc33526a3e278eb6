"""The saga pages and JSON API of `bus ui`, over a store (SQLite and PostgreSQL) that a real
refunds subscriber filled: r-1 running with its timeout pending, r-2 completed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from playwright.async_api import Browser, expect

from bus.settings import Settings
from bus.topology.model import Topology, from_dict
from bus.ui import UiConfig, create_app
from tests.integration.saga_kit import doc, store_of, two_refunds
from tests.integration.test_ui_browser import WAIT, browser, shot
from tests.integration.ui_kit import TOKEN, serving
from tests.integration.ui_kit import ui_client as client

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

__all__ = ["browser"]  # the fixture, shared with the DLQ's browser test


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with store_of(request.param, tmp_path) as url:
        yield url


def ui(url: str, topology: Topology, store_url: str, tmp: Path) -> FastAPI:
    settings = Settings(url=url, store_url=store_url,
                        outbox_url=f"sqlite:///{tmp / 'no-outbox.db'}")  # fmt: skip
    return create_app(UiConfig(settings, token=TOKEN), topology)


async def test_api_lists_filters_and_shows_saga_instances(
    amqp_url: str, prefix: str, store_url: str, tmp_path: Path
) -> None:
    topology = await two_refunds(amqp_url, prefix, store_url)
    async with client(ui(amqp_url, topology, store_url, tmp_path)) as c:
        summary = (await c.get("/api/sagas")).json()
        assert summary == {"sagas": [{"subscriber": "refunds", "saga": "refund",
                                      "running": 1, "completed": 1}]}  # fmt: skip

        listed = (await c.get("/api/subscribers/refunds/sagas")).json()
        assert listed["sagas"] == ["refund"]
        assert [(i["key"], i["status"]) for i in listed["instances"]] == [
            ("r-2", "completed"),
            ("r-1", "running"),
        ]  # fmt: skip, newest first
        r2 = listed["instances"][0]
        assert r2["saga"] == "refund" and r2["updated_at"].endswith("Z")
        running = await c.get("/api/subscribers/refunds/sagas", params={"status": "running"})
        assert [i["key"] for i in running.json()["instances"]] == ["r-1"]
        by_saga = await c.get("/api/subscribers/refunds/sagas", params={"saga": "refund"})
        assert len(by_saga.json()["instances"]) == 2
        bad = await c.get("/api/subscribers/refunds/sagas", params={"status": "paused"})
        assert bad.status_code == 422

        one = (await c.get("/api/subscribers/refunds/sagas/refund/r-1")).json()
        assert one["status"] == "running" and one["state"]["amount"] == 40
        assert [(s["event_id"], s["type"]) for s in one["steps"]] == [("e-1", "refund.requested")]
        assert [t["type"] for t in one["timeouts"]] == ["refund.expired"]
        done = (await c.get("/api/subscribers/refunds/sagas/refund/r-2")).json()
        assert [s["event_id"] for s in done["steps"]] == ["e-2", "e-3"]
        assert done["timeouts"] == [] and done["state"]["status"] == "done"

        for path, says in (
            ("/api/subscribers/refunds/sagas/refund/r-9", "no 'refund' saga with key 'r-9'"),
            ("/api/subscribers/refunds/sagas/refnd/r-1", "has no saga 'refnd'"),
            ("/api/subscribers/refunds/sagas?saga=refnd", "has no saga 'refnd'"),
            ("/api/subscribers/nobody/sagas", "no subscriber 'nobody'"),
        ):
            missing = await c.get(path)
            assert missing.status_code == 404 and says in missing.json()["detail"], missing.text


async def test_pages_show_the_instances_and_one_instance_in_full(
    amqp_url: str, prefix: str, store_url: str, tmp_path: Path
) -> None:
    topology = await two_refunds(amqp_url, prefix, store_url)
    async with client(ui(amqp_url, topology, store_url, tmp_path)) as c:
        overview = await c.get("/")
        assert 'href="/sagas"' in overview.text
        summary = (await c.get("/sagas")).text
        assert (
            'data-saga="refund"' in summary and "/subscribers/refunds/sagas?saga=refund" in summary
        )

        listed = await c.get("/subscribers/refunds/sagas", params={"saga": "", "status": ""})
        assert listed.status_code == 200
        assert listed.text.count('class="instance"') == 2
        completed = await c.get("/subscribers/refunds/sagas", params={"status": "completed"})
        assert completed.text.count('class="instance"') == 1 and 'data-key="r-2"' in completed.text

        page = await c.get("/subscribers/refunds/sagas/refund/r-1")
        assert page.status_code == 200
        for text in ("e-1", "refund.requested", "refund.expired", "&#34;amount&#34;: 40"):
            assert text in page.text, text
        assert page.text.count('class="timeout"') == 1
        gone = await c.get("/subscribers/refunds/sagas/refund/r-9")
        assert gone.status_code == 404 and "no &#39;refund&#39; saga with key" in gone.text


async def test_unreachable_store_is_a_503_that_names_it(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topology = from_dict(doc(prefix))
    down = "postgresql://postgres@127.0.0.1:1/test"
    async with client(ui(amqp_url, topology, down, tmp_path)) as c:
        r = await c.get("/api/subscribers/refunds/sagas")
        assert r.status_code == 503 and "cannot reach the store" in r.json()["detail"]
        page = await c.get("/sagas")
        assert page.status_code == 503


@pytest.mark.slow
async def test_operator_finds_a_running_refund_and_its_pending_timeout_in_the_browser(
    amqp_url: str, prefix: str, tmp_path: Path, browser: Browser
) -> None:
    async with store_of("sqlite", tmp_path) as store_url:
        topology = await two_refunds(amqp_url, prefix, store_url)
        async with serving(ui(amqp_url, topology, store_url, tmp_path)) as base:
            page = await (
                await browser.new_context(viewport={"width": 1280, "height": 800})
            ).new_page()
            await page.goto(base)
            await page.get_by_role("link", name="sagas").click()
            row = page.locator('tr[data-saga="refund"]')
            await expect(row.locator(".running")).to_have_text("1", timeout=WAIT)
            await expect(row.locator(".completed")).to_have_text("1")
            await row.locator(".running a").click()
            await expect(page.locator("tr.instance")).to_have_count(1, timeout=WAIT)
            await expect(page.locator("select[name=status]")).to_have_value("running")
            await page.select_option("select[name=status]", "")
            await page.get_by_role("button", name="filter").click()
            await expect(page.locator("tr.instance")).to_have_count(2, timeout=WAIT)
            await shot(page, "sagas")
            await page.locator('tr.instance[data-key="r-1"] a').click()
            await expect(page.locator("#status")).to_have_text("running", timeout=WAIT)
            await expect(page.locator("tr.step")).to_have_count(1)
            await expect(page.locator("#steps")).to_contain_text("e-1")
            await expect(page.locator("tr.timeout")).to_contain_text("refund.expired")
            await expect(page.locator("#state")).to_contain_text('"amount": 40')
            await shot(page, "saga")
