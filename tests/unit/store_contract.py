"""The one suite every idempotency store passes (as watermill runs one suite per transport).

A test module subclasses `StoreContract` and provides two fixtures: `store`, and `other`, a
second handle on the same records (another connection, as a second replica would hold). A store
shared by separate replicas subclasses `ReplicaStoreContract` and also provides `dead_holder`:
a coroutine function that leaves a long-leased claim on (subscriber, event id) by a replica
that then died.
`clock_module` names the module whose `time` the store reads, so that a test can age records
without sleeping.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from types import ModuleType
from typing import ClassVar

import pytest

from bus.stores import Claim, Store
from bus.stores.base import HoldStore

DAY = 86_400.0
TINY_LEASE = 0.05
DeadHolder = Callable[[str, str], Awaitable[None]]


class ShiftedClock:
    """Wall-clock `time()` moved by `offset` seconds, to age records; `monotonic()` as it is."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


class StoreContract:
    clock_module: ClassVar[ModuleType]

    @pytest.fixture
    def sub(self) -> str:
        """A subscriber name of this test alone: stores may be shared between tests."""
        return f"sub-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def clock(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[ShiftedClock]:
        shifted = ShiftedClock()
        monkeypatch.setattr(self.clock_module, "time", shifted)
        yield shifted

    async def test_a_held_key_is_seen_by_another_replica_until_its_event_resolves(
        self, store: Store, other: Store, sub: str
    ) -> None:
        assert isinstance(store, HoldStore) and isinstance(other, HoldStore)
        await store.hold(sub, "o-1", "e-1")
        await store.hold(sub, "o-1", "e-1")  # again: still one hold, since the first
        [(key, event_id, since)] = await other.holds(sub)
        assert (key, event_id) == ("o-1", "e-1") and abs(since - time.time()) < 60
        await other.unhold(sub, "o-1", "e-other")  # not the event it waits for: kept
        assert [h[:2] for h in await store.holds(sub)] == [("o-1", "e-1")]
        await other.unhold(sub, "o-1", "e-1")
        assert await store.holds(sub) == []
        assert await store.holds(f"{sub}-else") == []

    async def test_first_claim_is_ours(self, store: Store, sub: str) -> None:
        assert await store.claim(sub, "e-1") is Claim.CLAIMED

    async def test_claim_after_complete_is_done(self, store: Store, sub: str) -> None:
        assert await store.claim(sub, "e-1") is Claim.CLAIMED
        await store.complete(sub, "e-1")
        assert await store.claim(sub, "e-1") is Claim.DONE

    async def test_complete_seen_by_another_replica(
        self, store: Store, other: Store, sub: str
    ) -> None:
        await store.claim(sub, "e-1")
        await store.complete(sub, "e-1")
        assert await other.claim(sub, "e-1") is Claim.DONE

    async def test_release_after_failure_lets_the_next_claim_run(
        self, store: Store, other: Store, sub: str
    ) -> None:
        assert await store.claim(sub, "e-1") is Claim.CLAIMED
        await store.release(sub, "e-1")
        assert await other.claim(sub, "e-1") is Claim.CLAIMED

    async def test_claim_is_busy_while_another_replica_holds_the_lease(
        self, store: Store, other: Store, sub: str
    ) -> None:
        assert await store.claim(sub, "e-1", lease=300) is Claim.CLAIMED
        assert await other.claim(sub, "e-1") is Claim.BUSY
        assert await store.claim(sub, "e-1") is Claim.BUSY, "a claim is not re-entrant"

    async def test_expired_lease_is_taken_over(self, store: Store, other: Store, sub: str) -> None:
        assert await store.claim(sub, "e-1", lease=TINY_LEASE) is Claim.CLAIMED
        await asyncio.sleep(TINY_LEASE * 2)
        assert await other.claim(sub, "e-1") is Claim.CLAIMED
        assert await store.claim(sub, "e-1") is Claim.BUSY, "the new lease holds"

    async def test_a_renewed_claim_outlives_its_first_lease(
        self, store: Store, other: Store, sub: str
    ) -> None:
        assert await store.claim(sub, "e-1", lease=TINY_LEASE) is Claim.CLAIMED
        await store.renew(sub, "e-1", lease=300)  # the heartbeat of a slow handler
        await asyncio.sleep(TINY_LEASE * 2)
        assert await other.claim(sub, "e-1") is Claim.BUSY, "the renewal did not extend it"

    async def test_release_after_complete_keeps_the_record(self, store: Store, sub: str) -> None:
        await store.claim(sub, "e-1")
        await store.complete(sub, "e-1")
        await store.release(sub, "e-1")
        assert await store.claim(sub, "e-1") is Claim.DONE

    async def test_complete_without_claim_records_the_id(self, store: Store, sub: str) -> None:
        await store.complete(sub, "e-1")
        assert await store.claim(sub, "e-1") is Claim.DONE

    async def test_subscribers_do_not_share_records(self, store: Store, sub: str) -> None:
        await store.claim(sub, "e-1")
        await store.complete(sub, "e-1")
        assert await store.claim(f"{sub}-other", "e-1") is Claim.CLAIMED
        assert await store.claim(sub, "e-2") is Claim.CLAIMED

    async def test_prune_removes_old_done_records_only(
        self, store: Store, sub: str, clock: ShiftedClock
    ) -> None:
        clock.offset = -30 * DAY
        await store.complete(sub, "old")
        await store.claim(sub, "old-but-running", lease=60 * DAY)
        clock.offset = 0.0
        await store.complete(sub, "new")

        assert await store.prune(older_than=7 * DAY) >= 1

        assert await store.claim(sub, "old") is Claim.CLAIMED, "the old record is gone"
        assert await store.claim(sub, "new") is Claim.DONE
        assert await store.claim(sub, "old-but-running") is Claim.BUSY, "claims are not pruned"

    async def test_concurrent_claims_of_one_id_have_exactly_one_winner(
        self, store: Store, other: Store, sub: str
    ) -> None:
        claims = [(store if i % 2 else other).claim(sub, "e-1") for i in range(10)]
        results = await asyncio.gather(*claims)
        assert sorted(results) == sorted([Claim.CLAIMED] + [Claim.BUSY] * 9), results

    async def test_concurrent_takeover_of_an_expired_lease_has_exactly_one_winner(
        self, store: Store, other: Store, sub: str
    ) -> None:
        await store.claim(sub, "e-1", lease=TINY_LEASE)
        await asyncio.sleep(TINY_LEASE * 2)
        claims = [(store if i % 2 else other).claim(sub, "e-1") for i in range(10)]
        results = await asyncio.gather(*claims)
        assert sorted(results) == sorted([Claim.CLAIMED] + [Claim.BUSY] * 9), results


class ReplicaStoreContract(StoreContract):
    """What a store shared by separate replicas (processes, connections) passes beyond that:
    `other` is another replica's handle, and `dead_holder` leaves a claim of a replica that
    died. (MemoryStore is one process's: it passes `StoreContract` alone.)"""

    async def test_release_by_another_replica_keeps_the_holders_lease(
        self, store: Store, other: Store, sub: str
    ) -> None:
        assert await store.claim(sub, "e-1", lease=300) is Claim.CLAIMED
        await other.release(sub, "e-1")  # a replica that ran without the claim, say
        assert await other.claim(sub, "e-1") is Claim.BUSY, "the holder's lease was deleted"

    async def test_a_dead_owners_claim_is_taken_over_at_once_not_after_its_lease(
        self, store: Store, sub: str, dead_holder: DeadHolder
    ) -> None:
        await dead_holder(sub, "e-1")  # leased for 300 s by a replica that died
        assert await store.claim(sub, "e-1") is Claim.CLAIMED
        assert await store.claim(sub, "e-1") is Claim.BUSY, "the new claim holds"
        await store.complete(sub, "e-1")
        assert await store.claim(sub, "e-1") is Claim.DONE

    async def test_concurrent_takeover_of_a_dead_owners_claim_has_exactly_one_winner(
        self, store: Store, other: Store, sub: str, dead_holder: DeadHolder
    ) -> None:
        await dead_holder(sub, "e-1")
        claims = [(store if i % 2 else other).claim(sub, "e-1") for i in range(10)]
        results = await asyncio.gather(*claims)
        assert sorted(results) == sorted([Claim.CLAIMED] + [Claim.BUSY] * 9), results
