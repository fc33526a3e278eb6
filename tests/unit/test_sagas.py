"""Sagas in TestBus: the same dispatch, on the virtual clock."""

from __future__ import annotations

from typing import Any

import pytest

from bus.testing import TestBus
from bus.topology.model import Topology, from_dict

KEYED = {
    "type": "object",
    "required": ["refund_id"],
    "properties": {"refund_id": {"type": "string"}},
}


def topology() -> Topology:
    events = [
        "refund.requested",
        "payment.refund_requested",
        "payment.refunded",
        "refund.expired",
        "refund.completed",
        "refund.failed",
        "refund.counted",
    ]
    return from_dict(
        {
            "version": 1,
            "exchanges": {"events": {"type": "topic"}},
            "events": {e: {"exchange": "events", "schema": KEYED} for e in events},
            "subscribers": {
                "refunds": {
                    "handlers": "tests.saga_handlers:router",
                    "bindings": [
                        {
                            "exchange": "events",
                            "keys": [
                                "refund.requested",
                                "payment.refunded",
                                "refund.expired",
                                "refund.counted",
                            ],
                        }
                    ],
                },
                "audit": {
                    "handlers": "tests.integration.helpers:EMPTY",
                    "bindings": [{"exchange": "events", "keys": ["#"]}],
                },
            },
        }
    )


async def published(tb: TestBus, subscriber: str = "audit") -> list[str]:
    return [h.type for h in tb.handled(subscriber)]


@pytest.fixture
async def tb() -> Any:
    async with TestBus(topology(), subscribers=["refunds"]) as bus:
        yield bus


async def test_the_refund_flow_completes_on_payment_refunded(tb: TestBus) -> None:
    await tb.publish("refund.requested", {"refund_id": "r-1", "amount": 40}, id="e-1")
    await tb.publish("payment.refunded", {"refund_id": "r-1"}, id="e-2")
    await tb.settle()
    status, state = tb.saga("refund", "r-1")
    assert (status, state.status, state.amount) == ("completed", "done", 40)
    # requested, payment.refund_requested, payment.refunded, refund.completed, refund.expired
    assert tb.pending("audit") == 5


async def test_a_three_day_timeout_passes_instantly_and_takes_the_compensation_path(
    tb: TestBus,
) -> None:
    await tb.publish("refund.requested", {"refund_id": "r-2", "amount": 5}, id="e-1")
    await tb.settle()
    assert tb.now == 3 * 86400
    status, state = tb.saga("refund", "r-2")
    assert (status, state.status) == ("completed", "expired")


async def test_a_timeout_after_completion_is_ignored(tb: TestBus) -> None:
    await tb.publish("refund.requested", {"refund_id": "r-3"}, id="e-1")
    await tb.publish("payment.refunded", {"refund_id": "r-3"}, id="e-2")
    await tb.settle()  # the timeout fires after the completion
    status, state = tb.saga("refund", "r-3")
    assert (status, state.status) == ("completed", "done")
    assert [h.type for h in tb.handled("refunds")][-1] == "refund.expired"  # acked, ignored


async def test_the_same_start_twice_makes_one_instance(tb: TestBus) -> None:
    await tb.publish("refund.requested", {"refund_id": "r-4", "amount": 1}, id="e-1")
    await tb.publish("refund.requested", {"refund_id": "r-4", "amount": 1}, id="e-1")
    await tb.publish("refund.requested", {"refund_id": "r-4", "amount": 9}, id="e-other")
    await tb.settle()
    assert tb.duplicates("refunds") == ["e-1"]
    _, state = tb.saga("refund", "r-4")
    assert state.amount == 1


async def test_an_event_for_no_instance_parks_with_no_saga(tb: TestBus) -> None:
    await tb.publish("payment.refunded", {"refund_id": "nope"}, id="e-1")
    await tb.settle()
    [parked] = tb.parked("refunds")
    assert parked.reason == "no-saga"
    assert tb.saga("refund", "nope") is None


async def test_steps_of_one_instance_count_every_event(tb: TestBus) -> None:
    await tb.publish("refund.requested", {"refund_id": "r-5"}, id="e-0")
    for i in range(20):
        await tb.publish("refund.counted", {"refund_id": "r-5"}, id=f"c-{i}")
    await tb.settle()
    _, state = tb.saga("refund", "r-5")
    assert state.count == 20
