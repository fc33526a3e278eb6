"""A memory alarm blocks publishing (`connection.blocked`): the publisher and the relay say so
(a log line, `bus_broker_blocked`, the relay's `/readyz`), wait rather than fail, and resume
with nothing lost once the alarm clears.

On the private node only (tests/integration/nodes.py): the shared broker's watermark is never
touched. Every test puts the node's watermark back, also when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import httpx
import pytest
from prometheus_client import CollectorRegistry

from bus import Context, Router
from bus.consume import handoff
from bus.metrics import Metrics
from bus.outbox import Outbox, open_outbox
from bus.outbox.relay import serve
from bus.produce.publisher import Publisher
from demo.stubs import free_port
from tests.conftest import wait_for
from tests.integration.helpers import applied, get_all, make_topology, queue_depth, running
from tests.integration.nodes import Node
from tests.integration.outbox_kit import outbox_db, relaying

pytestmark = [pytest.mark.rabbitmq4, pytest.mark.timeout(90)]

NORMAL_WATERMARK = "0.4"  # RabbitMQ's default
BLOCKED_LINE = re.compile(r"RabbitMQ at \S+ blocked publishing on connection \S+: low on memory")


@contextlib.asynccontextmanager
async def memory_alarm(node: Node) -> AsyncIterator[dict[str, float]]:
    """Sets the node's memory watermark to 0 (an alarm at once); `clear()` by the caller via
    the yielded times, and always at the end. Yields when each `rabbitmqctl` began:
    {"raised": t, "cleared": t} (the node acts before the command returns)."""
    times: dict[str, float] = {"raised": time.monotonic()}
    await asyncio.to_thread(node.ctl, "set_vm_memory_high_watermark", "0")
    try:
        yield times
    finally:
        await clear_alarm(node, times)


async def clear_alarm(node: Node, times: dict[str, float]) -> None:
    if "cleared" not in times:
        times["cleared"] = time.monotonic()
        await asyncio.to_thread(node.ctl, "set_vm_memory_high_watermark", NORMAL_WATERMARK)


def flow_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "bus.amqp.flow" and r.levelno == level
    ]


async def test_a_memory_alarm_stalls_publishing_says_so_and_loses_nothing_when_it_clears(
    private_node: Node, prefix: str, caplog: pytest.LogCaptureFixture, fault_report: Any
) -> None:
    url, n = private_node.url(), 500
    caplog.set_level(logging.INFO, logger="bus.amqp.flow")
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"]}})
    metrics = Metrics(CollectorRegistry())
    blocked = lambda: metrics.registry.get_sample_value("bus_broker_blocked")  # noqa: E731
    confirmed: list[str] = []
    confirmed_at: list[float] = []
    async with applied(url, topology):
        pub = await Publisher(url, topology, deadline=60, metrics=metrics).connect()

        async def publish_all() -> None:  # ~100/s, so the alarm comes mid-stream
            for i in range(n):
                confirmed.append(await pub.publish("order.placed", {"order_id": str(i)},
                                                   id=f"{prefix}-{i}"))  # fmt: skip
                confirmed_at.append(time.monotonic())
                await asyncio.sleep(0.01)

        publishing = asyncio.create_task(publish_all())
        try:
            await wait_for(lambda: len(confirmed) >= 50, timeout=20, message="50 confirmed")
            async with memory_alarm(private_node) as times:
                await wait_for(lambda: blocked() == 1, timeout=15,
                               message="bus_broker_blocked to turn 1")  # fmt: skip
                seen_blocked = time.monotonic()
                assert any(BLOCKED_LINE.search(m) for m in flow_lines(caplog, logging.WARNING))
                await asyncio.sleep(0.3)  # a publish read before the block may confirm
                stalled_at = len(confirmed)
                await asyncio.sleep(1.5)  # what must not happen meanwhile: more confirms
                assert len(confirmed) == stalled_at, "confirms went on under a memory alarm"
                assert not publishing.done(), "publish must wait under a block, not fail"
                await clear_alarm(private_node, times)
                await asyncio.wait_for(publishing, 30)
                drained = time.monotonic() - times["cleared"]
                resumed = confirmed_at[stalled_at] - times["cleared"]
            await wait_for(lambda: blocked() == 0, timeout=5, message="bus_broker_blocked 0")
            depth = await queue_depth(url, f"{prefix}.svc")
        finally:
            publishing.cancel()
            await pub.close()
    infos = flow_lines(caplog, logging.INFO)
    assert len(flow_lines(caplog, logging.WARNING)) == 1, "one WARNING per block"
    assert len(infos) == 1 and "unblocked publishing" in infos[0], infos
    lost = n - depth
    fault_report(scenario="memory alarm mid-stream (private node): publisher", sent=n,
                 confirmed=len(confirmed), handled=depth, duplicates=max(0, depth - n),
                 lost=max(0, lost), seconds=round(resumed, 2))  # fmt: skip
    print(f"\nflow control, publisher: alarm raised → blocked seen "
          f"{seen_blocked - times['raised']:.2f} s, stalled at {stalled_at}/{n}, "
          f"clear → next confirm {resumed:.2f} s, all {n} confirmed {drained:.2f} s, "
          f"queue {depth}")  # fmt: skip
    assert len(confirmed) == n and len(set(confirmed)) == n
    assert depth == n, f"{n} events confirmed, {depth} on the queue"


async def test_a_memory_alarm_keeps_outbox_rows_pending_and_readyz_503_then_they_drain(
    private_node: Node, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    fault_report: Any,
) -> None:  # fmt: skip
    url, before, during = private_node.url(), 20, 200
    caplog.set_level(logging.INFO)
    topology = make_topology(prefix, {"audit": {"keys": ["#"]}})
    outbox = Outbox(topology, source="shop")
    port = free_port()
    stop = asyncio.Event()
    async with applied(url, topology), outbox_db("sqlite", tmp_path) as db_url:
        store = await open_outbox(db_url)

        async def pending() -> int:
            return (await store.status(sample=0)).pending

        task = asyncio.create_task(serve(url, db_url, topology, metrics_port=port, stop=stop))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=3) as http:

                async def readyz() -> tuple[int, str]:
                    try:
                        r = await http.get("/readyz")
                    except httpx.HTTPError:
                        return 0, ""
                    return r.status_code, r.text

                await write_rows(db_url, outbox, prefix, 0, before)
                await wait_for(lambda: _is(readyz(), 200), timeout=15, message="/readyz 200")
                await wait_for(lambda: _zero(pending()), timeout=15, message="first rows relayed")
                async with memory_alarm(private_node) as times:
                    await write_rows(db_url, outbox, prefix, before, during)
                    await wait_for(lambda: _is(readyz(), 503), timeout=15, message="/readyz 503")
                    _, text = await readyz()
                    assert "broker blocked publishing: low on memory" in text, text
                    metrics_text = (await http.get("/metrics")).text
                    assert re.search(r"^bus_broker_blocked 1\.0$", metrics_text, re.M)
                    await asyncio.sleep(0.3)  # a publish read before the block may confirm
                    held = await pending()
                    await asyncio.sleep(1.0)  # rows must stay put meanwhile
                    assert held > 0 and await pending() == held, "rows left under an alarm"
                    await clear_alarm(private_node, times)
                    await wait_for(lambda: _zero(pending()), timeout=30, message="drained")
                    drained = time.monotonic() - times["cleared"]
                await wait_for(lambda: _is(readyz(), 200), timeout=15, message="/readyz 200")
                metrics_text = (await http.get("/metrics")).text
                assert re.search(r"^bus_broker_blocked 0\.0$", metrics_text, re.M)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await store.close()
        got = await get_all(url, f"{prefix}.audit")
    ids = [m.message_id for m in got]
    relay_trouble = [
        r for r in caplog.records if r.name == "bus.outbox.relay" and r.levelno >= logging.WARNING
    ]
    fault_report(scenario="memory alarm while rows wait (private node): relay",
                 sent=before + during, confirmed=len(set(ids)), handled=len(ids),
                 duplicates=len(ids) - len(set(ids)), lost=before + during - len(set(ids)),
                 seconds=round(drained, 2))  # fmt: skip
    print(
        f"\nflow control, relay: {held} of {during} rows held under the alarm; "
        f"clear → drained {drained:.2f} s"
    )
    assert sorted(ids) == sorted(f"{prefix}-{i}" for i in range(before + during)), "each once"
    assert len(relay_trouble) <= 1, [r.getMessage() for r in relay_trouble]


async def test_an_alarm_longer_than_the_relay_deadline_is_waited_out_without_republishing(
    private_node: Node, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay's deadline (here 1 s) is for a broker that stopped answering; a blocked one
    answers heartbeats and confirms once it reads again: no step fails, no row goes twice."""
    url, n = private_node.url(), 100
    caplog.set_level(logging.INFO)
    topology = make_topology(prefix, {"audit": {"keys": ["#"]}})
    outbox = Outbox(topology, source="shop")
    async with applied(url, topology), outbox_db("sqlite", tmp_path) as db_url:
        store = await open_outbox(db_url)
        try:
            async with relaying(db_url, topology, url, deadline=1.0) as relay:
                await wait_for(lambda: relay.ready, timeout=15, message="the relay ready")
                async with memory_alarm(private_node) as times:
                    await write_rows(db_url, outbox, prefix, 0, n)
                    await wait_for(lambda: relay.blocked, timeout=15, message="relay blocked")
                    await asyncio.sleep(3.0)  # three deadlines of block
                    assert (await store.status(sample=0)).pending > 0
                    assert not relay.ready and "low on memory" in relay.why_not_ready()
                    await clear_alarm(private_node, times)
                    await wait_for(lambda: _zero(_pending(store)), timeout=30, message="drained")
        finally:
            await store.close()
        got = await get_all(url, f"{prefix}.audit")
    ids = [m.message_id for m in got]
    trouble = [r.getMessage() for r in caplog.records
               if r.name == "bus.outbox.relay" and r.levelno >= logging.WARNING]  # fmt: skip
    assert sorted(ids) == sorted(f"{prefix}-{i}" for i in range(n)), "each row once"
    assert not trouble, f"a waited-out block is no failure of the relay's: {trouble}"


async def _pending(store: Any) -> int:
    return int((await store.status(sample=0)).pending)


async def write_rows(url: str, outbox: Outbox, prefix: str, start: int, count: int) -> None:
    async with aiosqlite.connect(url.removeprefix("sqlite:///")) as db:
        for i in range(start, start + count):
            await outbox.add(db, "order.placed", {"order_id": str(i)}, id=f"{prefix}-{i}")
        await db.commit()


async def _is(answer: Any, status: int) -> bool:
    return bool((await answer)[0] == status)


async def _zero(count: Any) -> bool:
    return bool(await count == 0)


async def test_a_subscriber_under_a_memory_alarm_goes_on_acking_what_publishes_nothing(
    private_node: Node, prefix: str, fault_report: Any
) -> None:
    """RabbitMQ blocks a connection once it publishes under an alarm, and stops reading it
    whole: a subscriber whose follow-ups shared the consuming connection stopped acking too,
    and stalled after its prefetch (~64 of 200 handled in a 4 s alarm). Its publishes have a
    connection of their own: the handlers that publish wait, the others go on."""
    url, n, every = private_node.url(), 200, 20  # every 20th handler publishes a follow-up
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"]},
                                      "audit": {"keys": ["order.shipped"]}})  # fmt: skip
    handled: list[str] = []
    followed: list[str] = []
    router = Router()

    @router.on("order.placed")
    async def placed(event: dict[str, Any], ctx: Context) -> None:
        if int(event["order_id"]) % every == 0:
            await ctx.publish("order.shipped", {"order_id": event["order_id"]})
            followed.append(event["order_id"])
        handled.append(event["order_id"])

    async with applied(url, topology):
        async with Publisher(url, topology) as pub:
            await pub.publish_many(
                [("order.placed", {"order_id": str(i)}) for i in range(1, n + 1)]
            )
        async with memory_alarm(private_node) as times, running(url, topology, "svc", router):
            # 190 publish nothing; 10 wait for the alarm, holding 10 of the prefetch (16)
            await wait_for(lambda: len(handled) >= n - n // every, timeout=20,
                           message=f"{n - n // every} handled under the alarm")  # fmt: skip
            under_alarm = len(handled)
            assert not followed, "a follow-up was confirmed under a memory alarm"
            await clear_alarm(private_node, times)
            await wait_for(lambda: len(handled) == n, timeout=20, message="all handled")
            resumed = time.monotonic() - times["cleared"]
        left = await queue_depth(url, f"{prefix}.svc")  # stopped: an unacked one is back
        shipped = await get_all(url, f"{prefix}.audit")
    fault_report(scenario="memory alarm while a subscriber handles 200 (private node): "
                 f"{under_alarm} handled under it", sent=n, confirmed=n, handled=len(handled),
                 duplicates=len(handled) - len(set(handled)), lost=n - len(set(handled)),
                 seconds=round(resumed, 2))  # fmt: skip
    assert len(set(handled)) == n and len(shipped) == n // every
    assert left == 0, f"{left} deliveries were never acked"


async def test_a_handler_failing_under_a_memory_alarm_is_retried_after_it_not_parked(
    private_node: Node, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry hand-off is a publish: under an alarm it waits. It used to time out (30 s,
    1 s here) and reject the event into the DLQ without its failure story, for a failure that
    had nothing to do with the broker."""
    monkeypatch.setattr(handoff, "HANDOFF_TIMEOUT", 1.0)
    url = private_node.url()
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"]}})
    attempts: list[int] = []
    router = Router()

    @router.on("order.placed")
    async def placed(event: dict[str, Any], ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("warehouse down")

    async with applied(url, topology):
        async with Publisher(url, topology) as pub:
            await pub.publish("order.placed", {"order_id": "1"}, id=f"{prefix}-1")
        async with memory_alarm(private_node) as times, running(url, topology, "svc", router):
            await wait_for(lambda: attempts == [1], timeout=10, message="the first attempt")
            await asyncio.sleep(3 * handoff.HANDOFF_TIMEOUT)  # the hand-off's deadline, thrice
            assert attempts == [1]
            await clear_alarm(private_node, times)
            await wait_for(lambda: attempts == [1, 2], timeout=10, message="the retry")
        parked = await queue_depth(url, f"{prefix}.svc.dlq")
    assert parked == 0, "the event was parked under the alarm instead of retried"
