"""Which publish failures are retried (the connection) and which surface at once (bugs)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import aiormq
import pytest

from bus.produce.publisher import Publisher
from bus.topology.model import from_dict

TOPOLOGY = from_dict(
    {
        "version": 1,
        "exchanges": {"shop.events": {"type": "topic"}},
        "events": {"order.placed": {"exchange": "shop.events"}},
        "subscribers": {},
    },
    source="test",
)


class FakeUnderlay:
    is_closed = False

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def basic_publish(self, *args: Any, **kw: Any) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


def publisher_on(underlay: FakeUnderlay) -> Publisher:
    pub = Publisher("amqp://unused", TOPOLOGY, deadline=30)
    pub._aiormq = underlay  # type: ignore[assignment]
    return pub


async def test_a_bare_runtime_error_is_a_bug_and_surfaces_at_once() -> None:
    underlay = FakeUnderlay(RuntimeError("a bug in the caller"))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="a bug in the caller"):
        await asyncio.wait_for(publisher_on(underlay).publish("order.placed", {}), 5)
    assert time.monotonic() - started < 1, "a bug must not be retried until the deadline"
    assert underlay.calls == 1


async def test_a_channel_in_an_invalid_state_is_retried_until_it_works() -> None:
    underlay = FakeUnderlay(aiormq.exceptions.ChannelInvalidStateError("reconnecting"))
    event_id = await asyncio.wait_for(
        publisher_on(underlay).publish("order.placed", {}, id="e-1"), 5
    )
    assert event_id == "e-1"
    assert underlay.calls == 2


async def test_a_runtime_error_while_the_connection_is_down_is_retried() -> None:
    """aiormq raises a bare RuntimeError ("... closed") for a channel of a reconnecting
    connection: that one is the connection's, not a bug."""
    underlay = FakeUnderlay(RuntimeError("<Connection ...> closed"))
    pub = publisher_on(underlay)
    reconnecting = SimpleNamespace(is_closed=False, connected=asyncio.Event(), transport=None)
    pub._connection = reconnecting  # type: ignore[assignment]
    assert await asyncio.wait_for(pub.publish("order.placed", {}, id="e-2"), 5) == "e-2"
    assert underlay.calls == 2


async def test_a_confirm_rejected_with_a_bare_exception_by_a_closing_channel_is_retried() -> None:
    """aiormq's FutureStore rejects pending confirms with a bare `Exception` when their channel
    closes with no reason (seen after the stall watchdog's reconnect, test_cluster.py)."""
    underlay = FakeUnderlay(Exception())
    assert (
        await asyncio.wait_for(publisher_on(underlay).publish("order.placed", {}, id="e-3"), 5)
        == "e-3"
    )
    assert underlay.calls == 2
