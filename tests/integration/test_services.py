"""One `bus publish order.placed` reaches email, analytics and fulfillment, each doing real work."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bus.consume.router import Router
from bus.consume.service import import_router
from demo.stubs import FlakyWarehouse, MailSink
from tests.conftest import wait_for
from tests.integration.helpers import applied, get_all, make_topology, running, topology_doc

SERVICES = {
    "email": {
        "handlers": "subscribers.email.handlers:router",
        "keys": ["order.placed", "order.shipped"],
    },
    "analytics": {"handlers": "subscribers.analytics.handlers:router", "keys": ["#"]},
    "fulfillment": {
        "handlers": "subscribers.fulfillment.handlers:router",
        "keys": ["order.placed"],
    },
    "audit": {"keys": ["shipment.requested"]},  # a test probe: sees what fulfillment publishes
}


def bus_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", *args], env={**os.environ, **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_one_published_order_reaches_all_three_services(
    amqp_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = topology_doc(prefix, SERVICES)
    topo_file = tmp_path / "topology.yaml"
    topo_file.write_text(yaml.safe_dump(doc))
    topology = make_topology(prefix, SERVICES)
    db = tmp_path / "analytics.db"
    with MailSink() as mailbox, FlakyWarehouse() as warehouse:
        monkeypatch.setenv("SMTP_URL", mailbox.url)
        monkeypatch.setenv("WAREHOUSE_URL", warehouse.url)
        monkeypatch.setenv("ANALYTICS_DB_URL", f"sqlite:///{db}")
        async with applied(amqp_url, topology):
            routers = {
                n: import_router(s["handlers"]) for n, s in SERVICES.items() if "handlers" in s
            }
            async with (
                running(amqp_url, topology, "email", routers["email"]),
                running(amqp_url, topology, "analytics", routers["analytics"]),
                running(amqp_url, topology, "fulfillment", routers["fulfillment"]),
            ):
                order = {"order_id": "o-1", "email": "ada@example.com", "customer": "Ada",
                         "total": 42.5, "items": [{"sku": "BOOK-1", "quantity": 2}]}  # fmt: skip
                done = await asyncio.to_thread(
                    bus_cli, "publish", "order.placed", "--data", json.dumps(order), "--id", "op-1",
                    env={"BUS_URL": amqp_url, "BUS_TOPOLOGY": str(topo_file)},
                )  # fmt: skip
                assert done.returncode == 0, done.stderr
                assert "published order.placed op-1" in done.stdout

                await wait_for(lambda: mailbox.messages, message="the confirmation mail")
                mail = mailbox.messages[0]
                assert mail["To"] == "ada@example.com"
                assert "o-1" in mail["Subject"]
                assert "2 x BOOK-1" in mail.get_payload()

                await wait_for(lambda: warehouse.calls, message="the warehouse webhook call")
                call = warehouse.calls[0]
                assert call.body == {
                    "order_id": "o-1",
                    "items": [{"sku": "BOOK-1", "quantity": 2}],
                }
                assert call.headers["Idempotency-Key"] == "op-1"

                from subscribers.analytics.handlers import counts

                async def counted() -> dict[str, int]:
                    rows = await (await counts()).totals()
                    return {t: c for t, _, c in rows}

                await wait_for(
                    lambda: _has(counted(), {"order.placed": 1, "shipment.requested": 1}),
                    message="analytics to count order.placed and shipment.requested",
                )
                shipped = await wait_for(
                    lambda: get_all(amqp_url, f"{prefix}.audit", timeout=0.2),
                    message="shipment.requested in the audit queue",
                )
                m = shipped[0]
                assert m.type == "shipment.requested"
                assert json.loads(m.body)["order_id"] == "o-1"
                assert m.headers["bus-causation-id"] == "op-1"
                assert m.correlation_id == "op-1"
                assert m.headers["cloudEvents_source"] == "fulfillment"
            from subscribers.analytics.handlers import close_databases

            await close_databases()  # its aiosqlite thread would keep the interpreter alive


async def _has(rows_coro: object, expected: dict[str, int]) -> bool:
    rows = await rows_coro  # type: ignore[misc]
    return all(rows.get(k) == v for k, v in expected.items())


def test_services_import_only_public_bus_api() -> None:
    for name in ("email", "analytics", "fulfillment"):
        assert isinstance(import_router(f"subscribers.{name}.handlers:router"), Router)
