"""Delayed events on the real broker: held by the delay levels, delivered to whoever is bound."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bus import Context, Publisher, Router
from bus.consume.runtime import Runtime
from bus.stores import MemoryStore
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology, queue_depth

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)


def recorder(arrivals: dict[str, float]) -> Router:
    router = Router()

    @router.on("order.placed")
    async def arrived(event: dict[str, Any], ctx: Context) -> None:
        arrivals[ctx.id] = time.monotonic()

    return router


def two_subscribers(prefix: str) -> Any:
    return make_topology(
        prefix, {"email": {"keys": ["order.placed"]}, "audit": {"keys": ["order.placed"]}}
    )


async def test_a_3s_delayed_event_arrives_at_two_subscribers_within_3_to_4_5s(
    amqp_url: str, prefix: str
) -> None:
    topology = two_subscribers(prefix)
    email: dict[str, float] = {}
    audit: dict[str, float] = {}
    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        runtimes = [
            Runtime(topology, "email", recorder(email), url=amqp_url, store=MemoryStore()),
            Runtime(topology, "audit", recorder(audit), url=amqp_url, store=MemoryStore()),
        ]
        for rt in runtimes:
            await rt.start()
        try:
            sent = time.monotonic()
            await pub.publish("order.placed", {"order_id": "o-1"}, id="d-1", delay="3s")
            await asyncio.sleep(2.5)
            assert not email and not audit, "a delayed event arrived before its delay"
            await wait_for(lambda: "d-1" in email and "d-1" in audit, timeout=5,
                           message="the delayed event at both subscribers")  # fmt: skip
        finally:
            for rt in runtimes:
                await rt.stop(5)
    took = {name: seen["d-1"] - sent for name, seen in (("email", email), ("audit", audit))}
    print(f"figure: a 3 s delayed event arrived after {took['email']:.3f} s (email), "
          f"{took['audit']:.3f} s (audit)")  # fmt: skip
    assert all(3.0 <= t <= 4.5 for t in took.values()), took


async def test_a_delayed_event_published_while_its_subscriber_is_down_arrives_when_it_is_back(
    amqp_url: str, prefix: str
) -> None:
    topology = two_subscribers(prefix)
    email: dict[str, float] = {}
    audit: dict[str, float] = {}
    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        up = Runtime(topology, "email", recorder(email), url=amqp_url, store=MemoryStore())
        await up.start()
        try:
            await pub.publish("order.placed", {"order_id": "o-2"}, id="d-2", delay=1)
            await wait_for(lambda: "d-2" in email, timeout=5, message="the running subscriber")
            await wait_for(
                lambda: _depth_is(amqp_url, f"{prefix}.audit", 1),
                timeout=5,
                message="the delayed event waiting in the stopped one's queue",
            )
            back = Runtime(topology, "audit", recorder(audit), url=amqp_url, store=MemoryStore())
            await back.start()
            try:
                await wait_for(lambda: "d-2" in audit, timeout=5, message="it, once back")
            finally:
                await back.stop(5)
        finally:
            await up.stop(5)


async def _depth_is(url: str, queue: str, n: int) -> bool:
    return await queue_depth(url, queue) == n


async def test_ctx_publish_with_a_delay_sends_the_follow_up_later(
    amqp_url: str, prefix: str
) -> None:
    topology = make_topology(prefix, {"shop": {"keys": ["order.placed"]},
                                      "survey": {"keys": ["order.shipped"]}})  # fmt: skip
    shop = Router()

    @shop.on("order.placed")
    async def placed(event: dict[str, Any], ctx: Context) -> None:
        await ctx.publish("order.shipped", {"order_id": event["order_id"]}, delay="2s")

    arrived: list[float] = []
    survey = Router()

    @survey.on("order.shipped")
    async def shipped(event: dict[str, Any], ctx: Context) -> None:
        arrived.append(time.monotonic())

    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        rts = [Runtime(topology, "shop", shop, url=amqp_url, store=MemoryStore()),
               Runtime(topology, "survey", survey, url=amqp_url, store=MemoryStore())]  # fmt: skip
        for rt in rts:
            await rt.start()
        try:
            sent = time.monotonic()
            await pub.publish("order.placed", {"order_id": "o-3"})
            await wait_for(lambda: arrived, timeout=6, message="the delayed follow-up")
        finally:
            for rt in rts:
                await rt.stop(5)
    assert 2.0 <= arrived[0] - sent <= 3.5, arrived[0] - sent


async def test_a_delay_over_the_longest_is_refused_before_sending(
    amqp_url: str, prefix: str
) -> None:
    topology = two_subscribers(prefix)
    async with Publisher(amqp_url, topology) as pub:
        with pytest.raises(ValueError, match="over the longest delay, 16777215 s"):
            await pub.publish("order.placed", {"order_id": "o"}, delay="200d")
