"""A failing store is retried while the delivery stays in hand, up to the claims' patience: the
message is never given back to its queue (which a quorum queue counts as a delivery) for an
outage shorter than that."""

from __future__ import annotations

import pytest

from bus.consume.claims import Claims
from bus.stores import Claim, MemoryStore


class Flaky(MemoryStore):
    """A MemoryStore whose calls fail *failures* times first."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionRefusedError("store down")

    async def claim(self, subscriber: str, event_id: str, lease: float = 30.0) -> Claim:
        self._maybe_fail()
        return await super().claim(subscriber, event_id, lease)

    async def complete(self, subscriber: str, event_id: str) -> None:
        self._maybe_fail()
        await super().complete(subscriber, event_id)


async def test_a_claim_waits_out_a_short_outage() -> None:
    store = Flaky(failures=3)
    claims = Claims(store, "email", 30, patience=5)
    assert await claims.claim("e-1") is Claim.CLAIMED
    assert store.calls == 4 and claims.holds("e-1")


async def test_a_complete_waits_out_an_outage_and_keeps_the_claim_held_until_then() -> None:
    store = Flaky(failures=0)
    claims = Claims(store, "email", 30, patience=5)
    await claims.claim("e-1")
    store.failures = store.calls + 2
    await claims.complete("e-1")
    assert not claims.holds("e-1")
    assert await store.claim("email", "e-1") is Claim.DONE


async def test_an_outage_longer_than_the_patience_raises_to_the_runtime() -> None:
    claims = Claims(Flaky(failures=1000), "email", 30, patience=0.3)
    with pytest.raises(ConnectionRefusedError):
        await claims.claim("e-1")
    assert not claims.holds("e-1")


async def test_no_patience_raises_at_once_as_before() -> None:
    store = Flaky(failures=1)
    with pytest.raises(ConnectionRefusedError):
        await Claims(store, "email", 30).claim("e-1")
    assert store.calls == 1
