"""What `bus saga list | show` and the `bus ui` saga pages read (bus.sagas.report), over the
memory saga store: the objects, the filters, and the unknown saga or key."""

from __future__ import annotations

import pytest

from bus.sagas import MemorySagaStore
from bus.sagas.report import SagaNotFound, listing, sagas_of, showing
from bus.sagas.saga import Timeout
from bus.sagas.store import Transition

AT = 1_765_000_000.0  # 2025-12-06T05:46:40Z


def step(saga: str, key: str, event_id: str, version: int, status: str = "running",
         timeouts: tuple[Timeout, ...] = ()) -> Transition:  # fmt: skip
    return Transition(
        subscriber="refunds", saga=saga, key=key, event_id=event_id, event_type=f"{saga}.step",
        state=f'{{"n": {version}}}', status=status, version=version, at=AT + version,
        correlation_id="c", source="refunds", timeouts=timeouts,
    )  # fmt: skip


@pytest.fixture
async def store() -> MemorySagaStore:
    s = MemorySagaStore()
    await s.commit(step("refund", "r-1", "e-1", 0, timeouts=(Timeout("t-1", "x", {}, 3600),)))
    await s.commit(step("refund", "r-2", "e-2", 0))
    await s.commit(step("refund", "r-2", "e-3", 1, status="completed"))
    return s


async def test_listing_is_newest_first_with_filters(store: MemorySagaStore) -> None:
    found = await listing(store, "refunds")
    assert [(o["key"], o["status"]) for o in found] == [("r-2", "completed"), ("r-1", "running")]
    assert found[1]["timeouts"] == [{"id": "t-1", "type": "x", "due_at": "2025-12-06T06:46:40Z"}]
    summary = await listing(store, "refunds", status="running", detail=False)
    assert [o["key"] for o in summary] == ["r-1"] and "steps" not in summary[0]
    assert await sagas_of(store, "refunds") == {"refund": {"running": 1, "completed": 1}}


async def test_showing_an_instance_with_its_steps(store: MemorySagaStore) -> None:
    o = await showing(store, "refunds", "refund", "r-2")
    assert o["state"] == {"n": 1} and o["version"] == 2 and o["timeouts"] == []
    assert [s["event_id"] for s in o["steps"]] == ["e-2", "e-3"]
    assert o["updated_at"] == "2025-12-06T05:46:41Z"


async def test_an_unknown_saga_or_key_says_which(store: MemorySagaStore) -> None:
    with pytest.raises(SagaNotFound, match="no 'refund' saga with key 'r-9'"):
        await showing(store, "refunds", "refund", "r-9")
    with pytest.raises(
        SagaNotFound, match=r"has no saga 'refnd' \(the sagas with instances: refund\)"
    ):
        await showing(store, "refunds", "refnd", "r-1")
    with pytest.raises(SagaNotFound, match="has no saga 'refnd'"):
        await listing(store, "refunds", saga="refnd")
    assert await listing(MemorySagaStore(), "refunds", saga="refund") == []  # nothing started yet
