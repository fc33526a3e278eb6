"""TestBus runs an ordered subscriber through the same gate as `bus run`: a retrying event holds
back its own key's later events, not the others'."""

from __future__ import annotations

from typing import Any

import pytest

from bus import Context, Router
from bus.errors import InvalidEvent
from bus.testing import TestBus
from bus.topology.model import from_dict


def _topology(ordered: bool) -> Any:
    sub: dict[str, Any] = {
        "handlers": "x.handlers:router",
        "bindings": [{"exchange": "events", "keys": ["order.*"]}],
        "retry": {"delays": ["1m", "5m"]},
    }
    if ordered:
        sub["ordered"] = True
    return from_dict({
        "version": 1,
        "exchanges": {"events": {"type": "topic"}},
        "events": {
            "order.placed": {"exchange": "events", "key": "order_id"},
            "order.cancelled": {"exchange": "events", "key": "order_id"},
        },
        "subscribers": {"fulfillment": sub},
    })  # fmt: skip


def _router(seen: list[str]) -> Router:
    router = Router()

    @router.on("order.*")
    async def handle(event: dict[str, Any], ctx: Context) -> None:
        if ctx.id == "a1" and ctx.attempt == 1:
            raise ConnectionError("warehouse down")
        seen.append(ctx.id)

    return router


async def _run(ordered: bool) -> tuple[list[str], float]:
    seen: list[str] = []
    async with TestBus(_topology(ordered), routers={"fulfillment": _router(seen)}) as tb:
        await tb.publish("order.placed", {"order_id": "a"}, id="a1")
        await tb.publish("order.cancelled", {"order_id": "a"}, id="a2")
        await tb.publish("order.placed", {"order_id": "b"}, id="b1")
        await tb.publish("order.cancelled", {"order_id": "a"}, id="a3")
        await tb.settle()
        assert [h.id for h in tb.handled("fulfillment")] == seen
        assert tb.pending("fulfillment") == 0
        return seen, tb.now


async def test_an_ordered_subscriber_holds_back_only_the_retrying_key() -> None:
    seen, now = await _run(ordered=True)
    assert seen == ["b1", "a1", "a2", "a3"]
    assert 60 <= now < 62  # the hold went round its lap until the retry came back


async def test_an_unordered_subscriber_lets_later_events_overtake_a_retry() -> None:
    seen, _ = await _run(ordered=False)
    assert seen == ["a2", "b1", "a3", "a1"]


async def test_testbus_sets_bus_key_and_refuses_an_event_without_its_key() -> None:
    async with TestBus(_topology(True), routers={"fulfillment": _router([])}) as tb:
        with pytest.raises(InvalidEvent):
            await tb.publish("order.placed", {"id": "a"})
