"""Flow control without a broker: a fake aiormq connection receives the broker's
connection.blocked / connection.unblocked frames; the publisher waits and says why."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any

import aiormq
import pytest
from pamqp.commands import Connection as Frames
from prometheus_client import CollectorRegistry

from bus.amqp.flow import BLOCKED_HANDLER, UNBLOCKED_HANDLER, Flow
from bus.errors import PublishTimeout
from bus.metrics import Metrics
from bus.produce.publisher import Publisher
from tests.unit.test_publisher_errors import TOPOLOGY, FakeUnderlay


class FakeConnection:
    """What aiormq's reader calls for the two frames (its name-mangled handlers)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def _Connection__handle_connection_blocked(self, frame: Any) -> None:
        self.seen.append("blocked")

    async def _Connection__handle_connection_unblocked(self, frame: Any) -> None:
        self.seen.append("unblocked")

    async def frame(self, frame: Any) -> None:  # as aiormq's reader dispatches it
        name = BLOCKED_HANDLER if isinstance(frame, Frames.Blocked) else UNBLOCKED_HANDLER
        await getattr(self, name)(frame)


def test_aiormq_still_handles_the_frames_where_the_flow_listens() -> None:
    assert hasattr(aiormq.Connection, BLOCKED_HANDLER), "aiormq renamed its blocked handler"
    assert hasattr(aiormq.Connection, UNBLOCKED_HANDLER), "aiormq renamed its unblocked handler"


async def test_a_block_is_said_once_counted_in_the_gauge_and_its_end_says_how_long(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics(CollectorRegistry())
    flow, conn = Flow("bus:publisher:shop"), FakeConnection()
    flow.attach(conn, "amqp://guest:***@rabbit-1:5672/")
    flow.report_to(metrics.broker_blocked)
    flow.report_to(metrics.broker_blocked)  # twice: still counted once
    caplog.set_level(logging.INFO, logger="bus.amqp.flow")

    await conn.frame(Frames.Blocked(reason="low on memory"))
    await conn.frame(Frames.Blocked(reason="low on memory"))  # a repeat is not a new block
    assert flow.blocked and flow.reason == "low on memory" and flow.blocks == 1
    assert _gauge(metrics) == 1
    assert flow.describe().startswith("broker blocked publishing (low on memory) for ")

    await conn.frame(Frames.Unblocked())
    assert not flow.blocked and _gauge(metrics) == 0
    assert conn.seen == ["blocked", "blocked", "unblocked"], "aiormq's own handling still runs"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "RabbitMQ at amqp://guest:***@rabbit-1:5672/ blocked publishing on connection "
        "bus:publisher:shop: low on memory; publishes wait until the broker's alarm clears"
    ]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "unblocked publishing" in infos[0] and " s (" in infos[0]


async def test_a_reconnect_ends_the_block_of_the_old_connection() -> None:
    flow, old = Flow(), FakeConnection()
    flow.attach(old, "node-1")
    await old.frame(Frames.Blocked(reason="low on disk space"))
    waiter = asyncio.create_task(flow.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    flow.attach(FakeConnection(), "node-2")
    await asyncio.wait_for(waiter, 1)
    assert not flow.blocked and flow.node == "node-2"


def blocked_publisher(deadline: float) -> tuple[Publisher, Flow, FakeConnection, FakeUnderlay]:
    pub = Publisher("amqp://unused", TOPOLOGY, deadline=deadline)
    underlay = FakeUnderlay()
    pub._aiormq = underlay  # type: ignore[assignment]
    flow, conn = Flow(), FakeConnection()
    flow.attach(conn, "node")
    pub._flow = flow
    pub._connection = SimpleNamespace(  # type: ignore[assignment]
        is_closed=False, connected=_set(), transport=SimpleNamespace(connection=conn)
    )
    return pub, flow, conn, underlay


async def test_a_publish_while_blocked_waits_without_sending_and_goes_out_once_unblocked() -> None:
    pub, _, conn, underlay = blocked_publisher(deadline=30)
    await conn.frame(Frames.Blocked(reason="low on memory"))
    task = asyncio.create_task(pub.publish("order.placed", {}, id="e-1"))
    await asyncio.sleep(0.2)
    assert not task.done() and underlay.calls == 0, "nothing written into a blocked socket"
    await conn.frame(Frames.Unblocked())
    assert await asyncio.wait_for(task, 1) == "e-1"
    assert underlay.calls == 1, "sent once, no republish"


async def test_a_block_outlasting_the_deadline_is_a_publish_timeout_naming_the_block() -> None:
    pub, _, conn, underlay = blocked_publisher(deadline=0.3)
    await conn.frame(Frames.Blocked(reason="low on memory"))
    started = time.monotonic()
    with pytest.raises(PublishTimeout) as raised:
        await asyncio.wait_for(pub.publish("order.placed", {}, id="e-2"), 5)
    assert time.monotonic() - started < 2
    assert "not confirmed within 0s: broker blocked publishing (low on memory) for 0 s" in str(
        raised.value
    )
    assert underlay.calls == 0


def _set() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


def _gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("bus_broker_blocked")


async def test_a_deadline_stops_while_blocked_and_starts_afresh_when_unblocked() -> None:
    flow, conn = Flow(), FakeConnection()
    flow.attach(conn, "node")

    async def confirm_after(seconds: float) -> str:
        async with flow.deadline(0.3):
            await asyncio.sleep(seconds)
        return "confirmed"

    late = asyncio.create_task(confirm_after(0.6))
    await asyncio.sleep(0.1)
    await conn.frame(Frames.Blocked(reason="low on memory"))
    await asyncio.sleep(0.4)  # past the 0.3 s deadline, but all of it blocked
    await conn.frame(Frames.Unblocked())  # 0.3 s afresh: the sleep ends first
    assert await asyncio.wait_for(late, 1) == "confirmed"
    with pytest.raises(TimeoutError):  # unblocked throughout: an ordinary deadline
        await confirm_after(0.6)


async def test_a_publisher_that_waits_out_blocks_does_not_time_out_under_one() -> None:
    pub, _, conn, underlay = blocked_publisher(deadline=0.2)
    pub.wait_out_blocks = True
    await conn.frame(Frames.Blocked(reason="low on memory"))
    task = asyncio.create_task(pub.publish("order.placed", {}, id="e-3"))
    await asyncio.sleep(0.5)  # longer than the deadline
    assert not task.done() and underlay.calls == 0
    await conn.frame(Frames.Unblocked())
    assert await asyncio.wait_for(task, 1) == "e-3"
    assert underlay.calls == 1
