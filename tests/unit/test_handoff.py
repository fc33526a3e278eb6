"""HandOff: never two republishes with one message id in flight (aiormq matches returns by id)."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

from pamqp.commands import Basic

from bus.consume.handoff import HandOff


class FakeUnderlay:
    def __init__(self) -> None:
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight = 0
        self.calls = 0
        self.on_first_done: Any = None

    async def basic_publish(self, body: bytes, *, properties: Basic.Properties, **kw: Any) -> None:
        key = properties.message_id or ""
        self.calls += 1
        call = self.calls
        self.in_flight[key] += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight[key])
        await asyncio.sleep(0.01)
        self.in_flight[key] -= 1
        if call == 1 and self.on_first_done is not None:
            self.on_first_done()  # a new hand-off of the same id arrives right now


class FakeChannel:
    def __init__(self, underlay: FakeUnderlay) -> None:
        self.underlay = underlay

    async def get_underlay_channel(self) -> FakeUnderlay:
        return self.underlay


def delivery(event_id: str) -> Any:
    return SimpleNamespace(
        message_id=event_id, body=b"{}", properties=Basic.Properties(message_id=event_id)
    )


async def test_a_hand_off_arriving_as_the_lock_passes_to_a_waiter_still_waits_its_turn() -> None:
    underlay = FakeUnderlay()
    handoff = HandOff(FakeChannel(underlay))  # type: ignore[arg-type]
    late: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    underlay.on_first_done = lambda: late.append(
        loop.create_task(handoff.republish(delivery("e-1"), "q.retry.1s", {}))
    )
    await asyncio.gather(
        handoff.republish(delivery("e-1"), "q.retry.1s", {}),
        handoff.republish(delivery("e-1"), "q.retry.1s", {}),
    )
    await asyncio.gather(*late)
    assert underlay.calls == 3
    assert underlay.most_in_flight == 1, "two publishes with one message id were in flight"
    assert not handoff._locks, "locks of finished ids are dropped"


async def test_different_ids_are_handed_off_concurrently() -> None:
    underlay = FakeUnderlay()
    handoff = HandOff(FakeChannel(underlay))  # type: ignore[arg-type]
    await asyncio.gather(*(handoff.republish(delivery(f"e-{i}"), "q.dlq", {}) for i in range(3)))
    assert underlay.calls == 3
