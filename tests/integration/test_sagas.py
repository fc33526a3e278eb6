"""Sagas on a real broker, with the SQLite and the PostgreSQL store: the refund flow, its
timeout, duplicates, parking, concurrent steps over two replicas, and SIGKILLs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from bus.metrics import Metrics
from bus.produce.publisher import Publisher
from bus.topology.model import from_dict
from tests import saga_handlers
from tests.conftest import wait_for
from tests.integration.helpers import applied, get_all, queue_depth
from tests.integration.saga_kit import detail, doc, replica, status_of, store_of

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with store_of(request.param, tmp_path) as url:
        yield url


class Audit:
    """Every event on the exchange, as the `audit` queue received it."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.queue = url, f"{prefix}.audit"
        self.seen: list[tuple[str, str]] = []  # (type, id)

    async def types(self) -> Counter[str]:
        for m in await get_all(self.url, self.queue, timeout=0.2):
            self.seen.append((m.type or "", m.message_id or ""))
        return Counter(t for t, _ in self.seen)


def steps(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "bus_saga_steps_total", {"subscriber": "refunds", "saga": "refund", "outcome": outcome}
    )
    return value or 0.0


async def test_the_refund_flow_completes_and_its_late_timeout_is_ignored(
    amqp_url: str, prefix: str, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(saga_handlers, "TIMEOUT", "2s")
    topology = from_dict(doc(prefix))
    audit = Audit(amqp_url, prefix)
    async with applied(amqp_url, topology), replica(amqp_url, topology, store_url) as metrics:
        async with Publisher(amqp_url, topology) as pub:
            await pub.publish("refund.requested", {"refund_id": "r-1", "amount": 40}, id="e-1")
            await wait_for(
                lambda: _has(audit, "payment.refund_requested"), 15, "the refund request"
            )
            assert (await status_of(store_url, "r-1")) == (
                "running", {"amount": 40, "status": "waiting", "count": 0}
            )  # fmt: skip
            pending = await detail(store_url, "r-1")
            assert pending is not None and [t.type for t in pending.timeouts] == ["refund.expired"]
            await pub.publish("payment.refunded", {"refund_id": "r-1"}, id="e-2")
        await wait_for(lambda: _has(audit, "refund.completed"), 15, "the completion")
        found = await detail(store_url, "r-1")
        assert found is not None and found.instance.status == "completed"
        assert [(s.event_id, s.type) for s in found.steps] == [
            ("e-1", "refund.requested"), ("e-2", "payment.refunded")
        ]  # fmt: skip
        assert found.timeouts == ()
        # the 2 s timeout fires after the completion: acked, ignored, no compensation
        await wait_for(lambda: steps(metrics, "ignored") == 1, 20, "the late timeout, ignored")
        counts = await audit.types()
    assert counts["refund.failed"] == 0 and counts["payment.refund_requested"] == 1
    assert (await status_of(store_url, "r-1"))[1]["status"] == "done"  # type: ignore[index]


async def test_the_timeout_path_compensates(
    amqp_url: str, prefix: str, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(saga_handlers, "TIMEOUT", "1s")
    topology = from_dict(doc(prefix))
    audit = Audit(amqp_url, prefix)
    async with applied(amqp_url, topology), replica(amqp_url, topology, store_url):
        async with Publisher(amqp_url, topology) as pub:
            await pub.publish("refund.requested", {"refund_id": "r-2", "amount": 7}, id="e-1")
        await wait_for(lambda: _has(audit, "refund.failed"), 20, "the compensation")
        assert await status_of(store_url, "r-2") == (
            "completed", {"amount": 7, "status": "expired", "count": 0}
        )  # fmt: skip


async def test_one_instance_per_key_and_no_saga_parks(
    amqp_url: str, prefix: str, store_url: str
) -> None:
    topology = from_dict(doc(prefix))
    audit = Audit(amqp_url, prefix)
    async with applied(amqp_url, topology), replica(amqp_url, topology, store_url) as metrics:
        async with Publisher(amqp_url, topology) as pub:
            for event_id, amount in (("e-1", 1), ("e-1", 1), ("e-9", 9)):
                await pub.publish("refund.requested", {"refund_id": "r-3", "amount": amount},
                                  id=event_id)  # fmt: skip
            await pub.publish("payment.refunded", {"refund_id": "nobody"}, id="e-x")
        dlq = f"{prefix}.refunds.dlq"
        await wait_for(lambda: _depth(amqp_url, dlq, 1), 15, "the parked event")
        await wait_for(lambda: steps(metrics, "ignored") == 1, 15, "the second start, ignored")
        [parked] = await get_all(amqp_url, dlq)
        assert parked.headers["bus-dead-reason"] == "no-saga"
        assert parked.message_id == "e-x"
        await wait_for(lambda: _has(audit, "payment.refund_requested"), 10, "the refund request")
        assert (await audit.types())["payment.refund_requested"] == 1
    assert (await status_of(store_url, "r-3"))[1]["amount"] == 1  # type: ignore[index]
    assert await status_of(store_url, "nobody") is None


async def test_twenty_concurrent_steps_over_two_replicas_lose_no_update(
    amqp_url: str, prefix: str, store_url: str
) -> None:
    topology = from_dict(doc(prefix))
    async with (
        applied(amqp_url, topology),
        replica(amqp_url, topology, store_url) as one,
        replica(amqp_url, topology, store_url) as two,
    ):
        async with Publisher(amqp_url, topology) as pub:
            await pub.publish("refund.requested", {"refund_id": "r-4"}, id="e-0")
            await wait_for(lambda: status_of(store_url, "r-4"), 15, "the instance")
            await pub.publish_many([("refund.counted", {"refund_id": "r-4"}) for _ in range(20)])
        await wait_for(lambda: _count_is(store_url, "r-4", 20), 30, "the counter to reach 20")
        assert steps(one, "ok") + steps(two, "ok") == 21
    found = await detail(store_url, "r-4")
    assert found is not None and len(found.steps) == 21


async def _has(audit: Audit, event_type: str) -> bool:
    return (await audit.types())[event_type] > 0


async def _depth(url: str, queue: str, n: int) -> bool:
    return await queue_depth(url, queue) >= n


async def _count_is(store_url: str, key: str, n: int) -> bool:
    found = await status_of(store_url, key)
    return found is not None and found[1]["count"] == n


# -- SIGKILL ---------------------------------------------------------------------------------


def spawn(tmp: Path, topo: Path, url: str, store_url: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.saga_faults", "refunds"],
        env={**os.environ, "BUS_URL": url, "BUS_TOPOLOGY": str(topo), "FAULT_DIR": str(tmp),
             "BUS_STORE_URL": store_url, "BUS_CLAIM_LEASE_SECONDS": "1",
             "SAGA_TIMEOUT": "1h", **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.parametrize("crash", ["after-step", "after-commit"])
async def test_a_sigkill_before_or_after_the_commit_applies_each_step_once(
    amqp_url: str, prefix: str, store_url: str, tmp_path: Path, crash: str
) -> None:
    """after-step: killed in the step, before its commit (the redelivery runs it again from
    the old state); after-commit: killed right after the commit, before the rows are relayed
    and the event acked (the redelivery is a duplicate, the rows go out after the restart)."""
    document = doc(prefix)
    topo = tmp_path / "topology.yaml"
    topo.write_text(yaml.safe_dump(document))
    topology = from_dict(document)
    audit = Audit(amqp_url, prefix)
    async with applied(amqp_url, topology):
        proc = spawn(tmp_path, topo, amqp_url, store_url, SAGA_CRASH=crash)
        async with Publisher(amqp_url, topology) as pub:
            await pub.publish("refund.requested", {"refund_id": "r-5", "amount": 3}, id="e-1")
            code = await asyncio.to_thread(proc.wait, 30)
            assert code == -signal.SIGKILL, (
                proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            )
            proc = spawn(tmp_path, topo, amqp_url, store_url)
            try:
                await wait_for(lambda: _has(audit, "payment.refund_requested"), 30, "the request")
                await pub.publish("payment.refunded", {"refund_id": "r-5"}, id="e-2")
                await wait_for(lambda: _has(audit, "refund.completed"), 30, "the completion")
                await wait_for(lambda: _depth_zero(amqp_url, prefix), 15, "the queue to drain")
            finally:
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 30) == 0
        counts = await audit.types()
    assert counts["payment.refund_requested"] == 1 and counts["refund.completed"] == 1
    found = await detail(store_url, "r-5")
    assert found is not None and found.instance.status == "completed"
    assert [s.event_id for s in found.steps] == ["e-1", "e-2"]
    assert json.loads(found.instance.state)["amount"] == 3


async def _depth_zero(url: str, prefix: str) -> bool:
    return await queue_depth(url, f"{prefix}.refunds") == 0
