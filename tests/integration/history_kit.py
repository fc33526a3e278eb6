"""Topologies whose exchange keeps history, and helpers to read its log, for the history tests."""

from __future__ import annotations

from typing import Any

from bus.history import History, HistoryEvent
from bus.topology.model import Topology, from_dict
from tests.integration.helpers import topology_doc


def history_doc(
    prefix: str,
    subscribers: dict[str, dict[str, Any]],
    history: dict[str, Any] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    doc = topology_doc(prefix, subscribers, **kw)
    doc["exchanges"][f"{prefix}.events"]["history"] = history or {"max_age": "1h"}
    return doc


def history_topology(prefix: str, subscribers: dict[str, dict[str, Any]], **kw: Any) -> Topology:
    return from_dict(history_doc(prefix, subscribers, **kw), source=f"test:{prefix}")


async def logged(url: str, prefix: str, **filters: Any) -> list[HistoryEvent]:
    """Every event of the test exchange's log that passes *filters*, oldest first."""
    async with History(url) as h:
        return [e async for e in h.read(f"{prefix}.events", **filters)]
