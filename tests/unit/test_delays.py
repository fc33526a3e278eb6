"""Delayed publish: the binary delay levels, their broker objects, and TestBus's virtual clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from bus import Context, Router
from bus.testing import TestBus
from bus.topology import delays as d
from bus.topology.model import Topology, from_dict
from bus.topology.plan import BindingDecl, ExchangeBindingDecl, QueueDecl, delay_objects
from bus.topology.routing import matches


def topology() -> Topology:
    return from_dict(
        {
            "version": 1,
            "exchanges": {"events": {}},
            "events": {"order.placed": {"exchange": "events"},
                       "order.review_requested": {"exchange": "events"}},
            "subscribers": {
                "email": {"handlers": "tests.unit.test_delays:email",
                          "bindings": [{"exchange": "events", "keys": ["order.*"]}]},
                "survey": {"handlers": "tests.unit.test_delays:survey",
                           "bindings": [{"exchange": "events", "keys": ["order.review_requested"]}]},
            },
        }
    )  # fmt: skip


def test_delays_are_whole_seconds_rounded_up_and_bounded() -> None:
    assert [d.seconds_of(x) for x in ("250ms", "3s", "3d", 1.2, timedelta(minutes=2))] == [
        1, 3, 259_200, 2, 120,
    ]  # fmt: skip
    assert d.MAX_DELAY == 16_777_215  # 194 days, 4 h 20 min 15 s
    assert d.seconds_of(d.MAX_DELAY) == d.MAX_DELAY
    with pytest.raises(ValueError, match="over the longest delay"):
        d.seconds_of(d.MAX_DELAY + 1)
    with pytest.raises(ValueError, match="not positive"):
        d.seconds_of(0)
    with pytest.raises(ValueError, match="is not a duration"):
        d.seconds_of("3 days")


def walk(seconds: int, exchange: str, event_type: str) -> tuple[int, str]:
    """Follow the bindings of delay_objects as RabbitMQ would: (seconds waited, final queue)."""
    decls = delay_objects(topology())
    at, key = d.route(seconds, exchange, event_type)
    waited = 0
    while True:
        queues = [b.queue for b in decls if isinstance(b, BindingDecl) and b.exchange == at
                  and matches(b.routing_key, key)]  # fmt: skip
        onward = [b.destination for b in decls if isinstance(b, ExchangeBindingDecl)
                  and b.source == at and matches(b.routing_key, key)]  # fmt: skip
        assert len(queues) + len(onward) == 1, (at, key, queues, onward)
        if onward:
            at = onward[0]
            continue
        q = next(x for x in decls if isinstance(x, QueueDecl) and x.name == queues[0])
        waited += q.arguments["x-message-ttl"] // 1000
        if q.name.startswith(f"{d.PREFIX}.out."):
            assert q.arguments["x-dead-letter-exchange"] == exchange
            assert q.arguments["x-dead-letter-routing-key"] == event_type
            return waited, q.name
        at = q.arguments["x-dead-letter-exchange"]


@pytest.mark.parametrize("seconds", [1, 2, 3, 5, 60, 259_200, d.MAX_DELAY])
def test_a_delay_passes_through_queues_whose_ttls_add_up_to_it(seconds: int) -> None:
    waited, final = walk(seconds, "events", "order.placed")
    assert waited == seconds
    assert final == "bus.delay.out.events.order.placed"


def test_delay_objects_are_one_ttl_per_queue_and_durable_quorum() -> None:
    queues = [q for q in delay_objects(topology()) if isinstance(q, QueueDecl)]
    assert len(queues) == d.LEVELS + 2  # the levels, then one out queue per event type
    for q in queues:
        assert q.arguments["x-queue-type"] == "quorum"
        assert q.arguments["x-dead-letter-strategy"] == "at-least-once"
    assert queues[3].name == "bus.delay.3.8s" and queues[3].arguments["x-message-ttl"] == 8000


email = Router()
survey = Router()
reviews: list[tuple[str, float]] = []


@email.on("order.placed")
async def confirm(event: dict[str, Any], ctx: Context) -> None:
    await ctx.publish("order.review_requested", event, delay="3d")


@email.on("order.review_requested")
async def ask(event: dict[str, Any], ctx: Context) -> None:
    return None


@survey.on("order.review_requested")
async def record(event: dict[str, Any], ctx: Context) -> None:
    reviews.append((event["order_id"], ctx.headers["bus-delay-seconds"]))


async def test_a_delayed_follow_up_arrives_after_three_virtual_days() -> None:
    reviews.clear()
    async with TestBus(topology(), routers={"email": email, "survey": survey}) as tb:
        await tb.publish("order.placed", {"order_id": "o-1"})
        await tb.settle()
        assert tb.now == 259_200
        assert reviews == [("o-1", 259_200)]
        assert [h.type for h in tb.handled("email")] == ["order.placed", "order.review_requested"]


async def test_a_delayed_event_waits_for_a_subscriber_that_is_not_running() -> None:
    reviews.clear()
    async with TestBus(topology(), routers={"email": email}, subscribers=["email"]) as tb:
        await tb.publish("order.review_requested", {"order_id": "o-2"}, delay="10s")
        assert tb.pending("survey") == 0, "not routed before it is due"
        await tb.settle()
        assert tb.now == 10 and tb.pending("survey") == 1
