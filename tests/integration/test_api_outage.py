"""The broker goes away while the orders API takes orders: the API keeps answering 201 as fast
as before, the events wait in its outbox, and the relay drains them, nothing lost, once the
broker is reachable again."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from api.orders import create_app
from api.settings import ApiSettings
from bus.outbox import open_outbox
from bus.settings import Settings
from bus.topology.model import from_dict
from demo.topology import demo_document
from tests.conftest import wait_for
from tests.integration.helpers import applied, get_all
from tests.integration.outbox_kit import relaying
from tests.integration.proxy import Proxy

TOPOLOGY = Path(__file__).resolve().parents[2] / "topology" / "topology.yaml"
ORDER = {"email": "ada@example.com", "customer": "Ada", "items": [{"sku": "BOOK-1", "quantity": 1}]}


async def place(client: httpx.AsyncClient, n: int) -> tuple[list[str], list[float]]:
    """*n* orders one after another: their ids and response times (seconds)."""
    ids, times = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        answer = await client.post("/orders", json=ORDER)
        times.append(time.perf_counter() - t0)
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["order_id"])
    return ids, times


async def pending(url: str) -> int:
    outbox = await open_outbox(url)
    try:
        return (await outbox.status()).pending
    finally:
        await outbox.close()


async def test_a_broker_outage_neither_fails_nor_slows_orders_and_loses_no_event(
    amqp_url: str, prefix: str, tmp_path: Path, fault_report: Any
) -> None:
    doc = demo_document(yaml.safe_load(TOPOLOGY.read_text()), prefix, ["1s"])
    topology_file = tmp_path / "topology.yaml"
    topology_file.write_text(yaml.safe_dump(doc))
    topology = from_dict(doc, source=str(topology_file))
    audit = f"{prefix}.analytics"  # bound to every event; nobody consumes it in this test
    db = f"sqlite:///{tmp_path / 'orders.db'}"
    proxy = await Proxy.to(amqp_url).start()
    broker = proxy.url(amqp_url)  # the API's subscriber and the relay reach RabbitMQ through it
    settings = ApiSettings(
        database_url=db, subscribe=True,
        bus=Settings(url=broker, topology=str(topology_file), store_url="memory://"),
    )  # fmt: skip
    app = create_app(settings, topology=topology)
    started = time.monotonic()
    async with applied(amqp_url, topology), app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://api") as client,
            relaying(db, topology, broker, deadline=2.0) as relay,
        ):
            await place(client, 10)  # warm-up
            before_ids, before = await place(client, 40)
            await wait_for(lambda: _drained(db), message="the first orders relayed")

            proxy.refusing = True  # RabbitMQ is unreachable from here on
            proxy.cut()
            await wait_for(lambda: not relay.ready, message="the relay to notice the outage")
            during_ids, during = await place(client, 40)
            assert await pending(db) == 40, "the events wait in the outbox"

            proxy.refusing = False
            await wait_for(lambda: _drained(db), timeout=30, message="the backlog to drain")
        messages = await get_all(amqp_url, audit)
    await proxy.close()

    placed = {m.correlation_id for m in messages if m.type == "order.placed"}
    assert placed >= {*before_ids, *during_ids}, "every order's event reached the broker"
    p50_before, p50_during = statistics.median(before) * 1e3, statistics.median(during) * 1e3
    worst_before, worst_during = max(before) * 1e3, max(during) * 1e3
    print(f"API response p50 {p50_before:.1f} ms before, {p50_during:.1f} ms during the outage; "
          f"max {worst_before:.1f} / {worst_during:.1f} ms")  # fmt: skip
    # the outage must not slow orders down; the bound leaves room for a loaded 2-core machine
    assert p50_during < 3 * p50_before + 10, (
        f"orders got slower while the broker was away: p50 {p50_before:.1f} -> {p50_during:.1f} ms"
    )
    fault_report(
        scenario=f"broker unreachable while the API takes 40 orders (API p50 {p50_before:.1f} → "
        f"{p50_during:.1f} ms, all 201)",
        sent=80, confirmed=80, handled=len(placed & {*before_ids, *during_ids}),
        duplicates=sum(m.type == "order.placed" for m in messages) - len(placed), lost=0,
        seconds=round(time.monotonic() - started, 1),
    )  # fmt: skip


async def _drained(db: str) -> bool:
    return await pending(db) == 0
