"""The retry ladder on the real broker: TTL'd retry queues, the DLQ and its failure story."""

from __future__ import annotations

import itertools
import time
from typing import Any

import aio_pika
import pytest

from bus import Context, Reject, Router
from bus.produce.publisher import Publisher
from tests.conftest import wait_for
from tests.integration.helpers import applied, get_all, make_topology, queue_depth, running

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

DELAYS = ["200ms", "400ms", "800ms"]
# A TTL'd queue dead-letters ~5 ms after the TTL here; allow scheduling noise on a 2-core box.
TOLERANCE = 0.25


async def test_failing_twice_then_succeeding_is_retried_after_each_delay_on_its_own_queue_only(
    amqp_url: str, prefix: str
) -> None:
    topology = make_topology(
        prefix,
        {"flaky": {"keys": ["order.placed"]}, "steady": {"keys": ["order.placed"]}},
        delays=DELAYS,
    )
    calls: list[tuple[int, float]] = []
    steady_calls: list[str] = []
    flaky, steady = Router(), Router()

    @flaky.on("order.placed")
    async def fails_twice(event: dict[str, Any], ctx: Context) -> None:
        calls.append((ctx.attempt, time.monotonic()))
        if ctx.attempt < 3:
            raise ConnectionError("warehouse unavailable")

    @steady.on("order.placed")
    async def once(event: dict[str, Any], ctx: Context) -> None:
        steady_calls.append(ctx.id)

    async with (
        applied(amqp_url, topology),
        running(amqp_url, topology, "flaky", flaky),
        running(amqp_url, topology, "steady", steady),
        Publisher(amqp_url, topology) as pub,
    ):
        await pub.publish("order.placed", {"order_id": "o-1"}, id="e-1")
        await wait_for(lambda: len(calls) == 3, timeout=10, message="three attempts")
        await wait_for(lambda: steady_calls, message="the other subscriber")
        # give a wrongly routed retry time to show up at the other subscriber
        await wait_for(lambda: time.monotonic() - calls[-1][1] > 0.3, message="settling")
        assert [a for a, _ in calls] == [1, 2, 3]
        gaps = [calls[i + 1][1] - calls[i][1] for i in range(2)]
        print(f"retry gaps: {[round(g * 1000, 1) for g in gaps]} ms for delays {DELAYS[:2]}")
        for gap, expected in zip(gaps, (0.2, 0.4), strict=True):
            assert expected - 0.01 <= gap <= expected + TOLERANCE, f"gaps {gaps} vs delays {DELAYS}"
        assert steady_calls == ["e-1"], "the other subscriber must see the event exactly once"
        assert await queue_depth(amqp_url, f"{prefix}.flaky.dlq") == 0


async def test_always_failing_handler_parks_in_dlq_with_every_contract_header(
    amqp_url: str, prefix: str
) -> None:
    topology = make_topology(prefix, {"email": {"keys": ["order.placed"]}}, delays=DELAYS)
    router = Router()
    attempts: list[int] = []
    times: list[float] = []

    @router.on("order.placed")
    async def boom(event: dict[str, Any], ctx: Context) -> None:
        attempts.append(ctx.attempt)
        times.append(time.monotonic())
        raise ValueError("smtp says no")

    async with (
        applied(amqp_url, topology),
        running(amqp_url, topology, "email", router),
        Publisher(amqp_url, topology) as pub,
    ):
        await pub.publish("order.placed", {"order_id": "o-2"}, id="e-2")
        dlq = f"{prefix}.email.dlq"
        await wait_for(
            lambda: _depth_is(amqp_url, dlq, 1), timeout=10, message="the message in the DLQ"
        )
        assert attempts == [1, 2, 3, 4]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        print(f"retry gaps: {[round(g * 1000, 1) for g in gaps]} ms for delays {DELAYS}")
        for gap, delay in zip(gaps, (0.2, 0.4, 0.8), strict=True):
            assert delay - 0.01 <= gap <= delay + TOLERANCE, f"gaps {gaps} vs delays {DELAYS}"
        (m,) = await get_all(amqp_url, dlq)
        h = m.headers
        assert h["bus-dead-reason"] == "retries-exhausted"
        assert h["bus-attempt"] == 4
        assert h["bus-subscriber"] == "email"
        assert h["bus-handler"].endswith("boom")
        assert h["bus-exception-type"] == "ValueError"
        assert h["bus-exception-message"] == "smtp says no"
        assert "smtp says no" in h["bus-exception-stacktrace"]
        assert h["bus-original-exchange"] == f"{prefix}.events"
        assert h["bus-original-routing-key"] == "order.placed"
        assert h["bus-first-failed-at"] <= h["bus-failed-at"]
        assert not [k for k in h if k.startswith("x-death")], "x-death must be stripped"
        assert m.message_id == "e-2" and m.type == "order.placed"
        assert m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert m.body == b'{"order_id":"o-2"}'


async def _depth_is(url: str, queue: str, n: int) -> bool:
    return await queue_depth(url, queue) == n


async def test_reject_invalid_and_unknown_messages_park_at_once_and_consuming_continues(
    amqp_url: str, prefix: str
) -> None:
    topology = make_topology(prefix, {"svc": {"keys": ["#"]}}, delays=DELAYS)
    router = Router()
    handled: list[str] = []

    @router.on("order.placed")
    async def placed(event: dict[str, Any], ctx: Context) -> None:
        if event.get("order_id") == "reject-me":
            raise Reject("customer is blocked")
        handled.append(event["order_id"])

    async with (
        applied(amqp_url, topology),
        running(amqp_url, topology, "svc", router),
    ):
        conn = await aio_pika.connect(amqp_url)
        ch = await conn.channel()
        ex = await ch.get_exchange(f"{prefix}.events")

        async def raw(body: bytes, **props: Any) -> None:
            await ex.publish(
                aio_pika.Message(body, **props), routing_key=props.get("type") or "order.placed"
            )

        await raw(b'{"order_id":"reject-me"}', message_id="m-reject", type="order.placed")
        await raw(b"{not json", message_id="m-notjson", type="order.placed")
        await raw(b"\xff\xfe\x00", message_id="m-notutf8", type="order.placed")
        await raw(b'{"order_id": 7}', message_id="m-schema", type="order.placed")
        await raw(b'{"x":1}', message_id="m-unknown", type="order.shipped")
        # no type (aiormq always sets a message_id, so "no id" is covered by the unit tests)
        await raw(b'{"order_id":"o"}', message_id="m-notype")
        await raw(b'{"order_id":"fine"}', message_id="m-ok", type="order.placed")
        await raw(  # a foreign producer speaking CloudEvents headers only
            b'{"order_id":"ce"}',
            headers={"cloudEvents_id": "m-ce", "cloudEvents_type": "order.placed"},
        )
        await conn.close()
        dlq = f"{prefix}.svc.dlq"
        await wait_for(
            lambda: _depth_is(amqp_url, dlq, 6), timeout=10, message="six parked messages"
        )
        await wait_for(lambda: len(handled) == 2, message="the good messages to be handled")
        parked = {m.message_id: m.headers for m in await get_all(amqp_url, dlq)}
        reasons = {k: h["bus-dead-reason"] for k, h in parked.items()}
        assert reasons == {
            "m-reject": "rejected",
            "m-notjson": "invalid",
            "m-notutf8": "invalid",
            "m-schema": "invalid",
            "m-unknown": "no-handler",
            "m-notype": "invalid",
        }
        assert all(h["bus-attempt"] == 1 for h in parked.values()), "no retries for these"
        assert "customer is blocked" in parked["m-reject"]["bus-exception-message"]
        assert sorted(handled) == ["ce", "fine"]
