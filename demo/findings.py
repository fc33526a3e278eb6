"""What `bus demo` reads of the services' own records to show the new flows: fulfillment's
ledger (did a cancellation overtake its order?), the search index, the refund sagas. Read-only;
a file a service has not created yet reads as nothing."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from bus.sagas import SagaStore, open_saga_store
from bus.stores import open_store
from bus.stores.base import Store
from demo.views import OrderingView, RefundsView


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return list(db.execute(sql).fetchall())
    except sqlite3.OperationalError:  # its table is not there yet
        return []


def ordering(ledger: Path, cancelled: Sequence[str], metric: int) -> OrderingView:
    """Each cancelled order's events, as fulfillment handled them (in its ledger's order)."""
    rows = _rows(ledger, "SELECT order_id, event_type, attempt, overtook FROM fulfillment_seen "
                         "ORDER BY seq")  # fmt: skip
    wanted = set(cancelled)
    story: dict[str, list[tuple[str, int]]] = {}
    for order_id, event_type, attempt, _ in rows:
        if order_id in wanted:
            story.setdefault(str(order_id), []).append((str(event_type), int(str(attempt))))
    seen = [events for events in story.values() if ("order.cancelled" in dict(events))]
    in_order = [e for e in seen if [t for t, _ in e] == ["order.placed", "order.cancelled"]]
    held = sum(1 for e in in_order if e[0][1] > 1)  # its order.placed needed a retry first
    return OrderingView(
        cancelled=len(cancelled), seen=len(seen), in_order=len(in_order),
        overtaken=sum(1 for r in rows if r[3]), metric=metric, held=held,
    )  # fmt: skip


def search_index(index: Path) -> tuple[int, int, int]:
    """Orders in the search index: in all, first indexed from history, cancelled."""
    rows = _rows(index, "SELECT COUNT(*), COALESCE(SUM(via = 'history'), 0), "
                        "COALESCE(SUM(status = 'cancelled'), 0) FROM search_orders")  # fmt: skip
    if not rows:
        return 0, 0, 0
    total, history, cancelled = (int(str(v)) for v in rows[0])
    return total, history, cancelled


class Refunds:
    """The refunds subscriber's saga instances, read from its store."""

    def __init__(self, store: Store, sagas: SagaStore) -> None:
        self.store, self.sagas = store, sagas

    @classmethod
    async def open(cls, url: str) -> Refunds:
        store = await open_store(url)
        return cls(store, await open_saga_store(store))

    async def view(self, requested: int, silent: int) -> RefundsView:
        found = await self.sagas.instances("refunds", "refund", None, 10_000)
        done = [i for i in found if i.status == "completed"]
        expired = sum(1 for i in done if json.loads(i.state).get("status") == "expired")
        return RefundsView(
            requested=requested, silent=silent, completed=len(done) - expired, failed=expired,
            running=len(found) - len(done),
        )  # fmt: skip

    async def close(self) -> None:
        await self.sagas.close()
        await self.store.close()
