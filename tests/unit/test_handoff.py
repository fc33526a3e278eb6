"""HandOff: never two republishes with one message id in flight (aiormq matches returns by id)."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

import aio_pika
import pytest
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


class Watch:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def sent(self) -> None:
        self.calls.append("sent")

    def confirmed(self) -> None:
        self.calls.append("confirmed")

    def nacked(self) -> None:
        self.calls.append("nacked")

    def settled(self) -> None:
        self.calls.append("settled")


class NackingUnderlay:
    """Nacks the first *nacks* publishes, then confirms."""

    def __init__(self, nacks: int) -> None:
        self.nacks = nacks
        self.calls = 0

    async def basic_publish(self, body: bytes, **kw: Any) -> None:
        self.calls += 1
        if self.calls <= self.nacks:
            raise aio_pika.exceptions.DeliveryError(None, Basic.Nack())  # type: ignore[arg-type]


async def test_a_nacked_hand_off_is_sent_again_and_told_to_the_connections_confirm_watch() -> None:
    """A failover nacks for a while: the copy goes again (the watch replaces a connection
    that nacks everything), rather than the event being parked in the DLQ."""
    underlay = NackingUnderlay(nacks=3)
    handoff = HandOff(FakeChannel(underlay))  # type: ignore[arg-type]
    handoff.watch = watch = Watch()
    await asyncio.wait_for(handoff.republish(delivery("e-1"), "q.retry.1s", {}), timeout=5)
    assert underlay.calls == 4
    assert watch.calls == ["sent", "nacked", "nacked", "nacked", "confirmed", "settled"]


async def test_a_returned_hand_off_is_not_sent_again() -> None:
    class Returning:
        calls = 0

        async def basic_publish(self, body: bytes, **kw: Any) -> None:
            self.calls += 1
            message = SimpleNamespace(delivery=Basic.Return())
            raise aio_pika.exceptions.PublishError(message, Basic.Return())  # type: ignore[arg-type]

    underlay = Returning()
    handoff = HandOff(FakeChannel(underlay))  # type: ignore[arg-type]
    with pytest.raises(aio_pika.exceptions.PublishError):
        await handoff.republish(delivery("e-1"), "q.dlq", {})
    assert underlay.calls == 1
