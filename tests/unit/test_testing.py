"""TestBus itself: the virtual clock, which routers run, what waits, the pytest fixture."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bus import Context, Router
from bus.errors import ConfigError, UnknownEventType
from bus.testing import Handled, TestBus
from bus.topology.model import Topology, from_dict

orders = Router()  # imported by TestBus through the topology's `handlers:`
shutdowns: list[str] = []


@orders.on("order.placed")
async def placed(event: dict[str, Any], ctx: Context) -> None:
    if ctx.attempt < 4:
        raise ConnectionError("down for an hour")


@orders.on_shutdown
async def closed() -> None:
    shutdowns.append("orders")


def topology() -> Topology:
    return from_dict(
        {
            "version": 1,
            "defaults": {"retry": {"delays": ["1m", "5m", "1h"]}},
            "exchanges": {"events": {"type": "topic"}},
            "events": {"order.placed": {"exchange": "events"}},
            "subscribers": {
                "orders": {
                    "handlers": "tests.unit.test_testing:orders",
                    "bindings": [{"exchange": "events", "keys": ["order.placed"]}],
                },
                "audit": {
                    "handlers": "tests.unit.test_testing:orders",
                    "bindings": [{"exchange": "events", "keys": ["#"]}],
                },
            },
        },
        source="test",
    )


async def test_an_hour_of_retry_delays_passes_on_the_virtual_clock_in_milliseconds() -> None:
    started = time.monotonic()
    async with TestBus(topology(), subscribers=["orders"]) as tb:
        await tb.publish("order.placed", {}, id="e-1")
        await tb.settle()
        assert tb.handled("orders") == [Handled("order.placed", "e-1", 4)]
        assert tb.now == 60 + 300 + 3600
    assert time.monotonic() - started < 2


async def test_routers_not_given_come_from_the_subscribers_handlers_and_shut_down() -> None:
    shutdowns.clear()
    quiet = Router()

    @quiet.on("#")
    async def noted(event: Any, ctx: Context) -> None:
        return None

    async with TestBus(topology(), routers={"audit": quiet}) as tb:
        await tb.publish("order.placed", {}, id="e-1")
        await tb.settle()
        assert [h.attempt for h in tb.handled("orders")] == [4], "the imported router ran"
        assert [h.attempt for h in tb.handled("audit")] == [1], "the given router ran"
    assert shutdowns == ["orders"], "shutdown hooks run on exit, as after a drain"


async def test_messages_for_a_subscriber_that_does_not_run_wait_in_its_queue() -> None:
    async with TestBus(topology(), subscribers=["orders"]) as tb:
        await tb.publish("order.placed", {}, id="e-1")
        await tb.settle()
        assert tb.pending("audit") == 1
        assert tb.pending("orders") == 0
        assert tb.handled("audit") == []


def test_an_unknown_subscriber_is_a_config_error_naming_the_declared_ones() -> None:
    with pytest.raises(ConfigError, match=r"'billing'.*declared: orders, audit"):
        TestBus(topology(), routers={"billing": Router()})


async def test_a_handler_publishing_forever_fails_settle_instead_of_hanging() -> None:
    loop = Router()

    @loop.on("order.placed")
    async def again(event: Any, ctx: Context) -> None:
        await ctx.publish("order.placed", {}, id=f"{ctx.id}+")

    async with TestBus(topology(), routers={"orders": loop}, subscribers=["orders"],
                       max_deliveries=50) as tb:  # fmt: skip
        await tb.publish("order.placed", {}, id="e")
        with pytest.raises(RuntimeError, match="still busy after 50 deliveries"):
            await tb.settle()


async def test_the_testbus_fixture_loads_the_projects_topology(testbus: TestBus) -> None:
    assert {"email", "analytics", "fulfillment", "orders"} <= set(testbus.topology.subscriber_names)
    with pytest.raises(UnknownEventType):
        await testbus.publish("order.teleported", {})
