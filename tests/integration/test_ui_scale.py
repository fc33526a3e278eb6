"""`bus ui` stays fast with 10,000 parked messages: the DLQ is read in one bulk browse, grouped,
and the grouping is reused by the refreshes that follow (not re-read message by message).

Prints the timings and writes them to .bus/ui-scale.json (the figure in the docs: guides/dlq.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import aio_pika
import httpx
import pytest

from bus.settings import Settings
from bus.ui import UiConfig, create_app
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology, queue_depth
from tests.integration.ui_kit import ui_client
from tests.ui_handlers import HANDLERS

PARKED = 10_000
TRACE = "Traceback (most recent call last):\n" + '  File "handlers.py", line 12, in confirm\n' * 30
OUT = Path(__file__).resolve().parents[2] / ".bus" / "ui-scale.json"


async def park(url: str, queue: str, count: int) -> None:
    """*count* messages straight into the DLQ, as the runtime parks them (two exception types)."""
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel(publisher_confirms=False)
        for i in range(count):
            kind = "TimeoutError" if i % 3 else "httpx.ConnectError"
            headers = {
                "bus-attempt": 4, "bus-dead-reason": "retries-exhausted",
                "bus-exception-type": kind, "bus-exception-message": f"{kind} on o-{i}",
                "bus-exception-stacktrace": TRACE + f"{kind}: o-{i}\n",
                "bus-failed-at": f"2026-12-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z",
                "bus-subscriber": "email",
            }  # fmt: skip
            body = json.dumps({"order_id": f"o-{i}", "email": f"c{i}@example.com"}).encode()
            await channel.default_exchange.publish(
                aio_pika.Message(
                    body, message_id=f"e-{i}", type="order.placed", headers=headers, delivery_mode=2
                ),
                routing_key=queue,
            )
    finally:
        await conn.close()


async def timed(c: httpx.AsyncClient, path: str) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    r = await c.get(path)
    return time.perf_counter() - started, r


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_dlq_page_with_10k_parked_messages_is_fast_and_browses_once(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topology = make_topology(prefix, {"email": {"keys": ["order.placed"], "handlers": HANDLERS}})
    dlq = f"{prefix}.email.dlq"
    async with applied(amqp_url, topology):
        await park(amqp_url, dlq, PARKED)

        async def all_parked() -> bool:
            return await queue_depth(amqp_url, dlq) == PARKED

        await wait_for(all_parked, timeout=60, message=f"{PARKED} messages in {dlq}")
        settings = Settings(url=amqp_url, outbox_url=f"sqlite:///{tmp_path / 'none.db'}")
        app = create_app(UiConfig(settings, browse_ttl=5.0), topology)
        async with ui_client(app) as c:
            page = "/subscribers/email/dlq"
            cold, r = await timed(c, page)
            assert r.status_code == 200 and f">{PARKED}<" in r.text, r.text[:2000]
            warm = [(await timed(c, page))[0] for _ in range(5)]
            fragment, _ = await timed(c, f"{page}/fragment")
            overview, o = await timed(c, "/")
            assert o.status_code == 200
            api, j = await timed(c, "/api/subscribers/email/dlq")
            groups = {g["exception_type"]: g["count"] for g in j.json()["groups"]}
            assert groups == {"TimeoutError": 6666, "httpx.ConnectError": 3334}, groups
            story, m = await timed(c, f"{page}/message?id=e-{PARKED - 1}")
            assert m.status_code == 200 and f"o-{PARKED - 1}" in m.text
            browse = app.state.backend.cache._entries[dlq]
            report = {
                "parked": PARKED,
                "dlq_page_cold_seconds": round(cold, 3),
                "dlq_page_warm_seconds_max": round(max(warm), 3),
                "dlq_fragment_seconds": round(fragment, 3),
                "bulk_browse_seconds": round(browse.seconds, 3),
                "overview_seconds": round(overview, 3),
                "api_dlq_seconds": round(api, 3),
                "story_of_the_last_message_seconds": round(story, 3),
                "page_bytes": len(r.content),
            }
            OUT.parent.mkdir(exist_ok=True)
            OUT.write_text(json.dumps(report, indent=2))
            print("\nbus ui at 10k parked:", json.dumps(report))
            assert await queue_depth(amqp_url, dlq) == PARKED, "browsing removed nothing"
            assert max(warm) < 1.0, f"a refresh re-read the DLQ: {warm}"
            assert cold < 20.0, f"the first browse of {PARKED} took {cold:.1f}s"
