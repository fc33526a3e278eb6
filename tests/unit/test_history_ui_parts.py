"""The pure and local parts of an event's story in `bus ui`: which subscribers an event reaches,
and what the processed table says of it (read-only; unreadable is None, never an error)."""

from __future__ import annotations

from pathlib import Path

from bus.stores.sqlite import SqliteStore
from bus.topology.model import from_dict
from bus.ui.eventstory import reached
from bus.ui.handled import states


def test_an_event_reaches_the_subscribers_whose_bindings_match_its_type() -> None:
    t = from_dict(
        {
            "version": 1,
            "exchanges": {"events": {"type": "topic", "history": {"max_age": "1d"}}},
            "events": {"order.placed": {"exchange": "events"},
                       "shipment.sent": {"exchange": "events"}},
            "subscribers": {
                "email": {"handlers": "m:r", "bindings": [{"exchange": "events",
                                                            "keys": ["order.placed"]}]},
                "audit": {"handlers": "m:r", "bindings": [{"exchange": "events", "keys": ["#"]}]},
                "ship": {"handlers": "m:r", "bindings": [{"exchange": "events",
                                                           "keys": ["shipment.*"]}]},
            },
        }
    )  # fmt: skip
    assert [s.name for s in reached(t, "events", "order.placed")] == ["email", "audit"]
    assert [s.name for s in reached(t, "events", "shipment.sent")] == ["audit", "ship"]


async def test_the_processed_table_is_read_without_being_created_or_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "processed.db"
    url = f"sqlite:///{path}"
    assert await states(url, ["email"], "e-1") is None  # no file: unknown, and none created
    assert not path.exists()
    store = await SqliteStore.open(str(path))
    try:
        await store.claim("email", "e-1")
        await store.complete("email", "e-1")
        await store.claim("audit", "e-1")
    finally:
        await store.close()
    assert await states(url, ["email", "audit", "ship"], "e-1") == {
        "email": "done", "audit": "claimed",
    }  # fmt: skip
    assert await states(url, [], "e-1") == {}
    assert await states("memory://", ["email"], "e-1") is None
    assert await states("postgresql://nobody@127.0.0.1:1/none", ["email"], "e-1") is None
