"""Backfill: a subscriber declared with `backfill: 7d` gets, when `bus topology apply` first
creates its queue, the matching events of the last 7 days from history, once.

`apply` binds the new queue first, then the copy reads each log up to a marker appended after
the binding: an event published before the marker is copied, one published after it arrives
through the binding, one published in between does both and the processed table absorbs the
second. No gap, nothing lost. A subscriber whose queue already existed gets nothing
(`bus replay` does that on request).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from aio_pika.abc import AbstractConnection

from bus.durations import parse_ms
from bus.history.replay import Outcome, replay

__all__ = ["Outcome", "backfill", "due", "selection_of"]
from bus.history.select import Selection
from bus.topology.diff import Action, Step
from bus.topology.model import Subscriber, Topology
from bus.topology.plan import QueueDecl, Role


def due(topology: Topology, steps: Sequence[Step]) -> list[Subscriber]:
    """Subscribers with `backfill:` whose main queue these steps create."""
    created = {
        s.decl.owner
        for s in steps
        if s.action is Action.CREATE and isinstance(s.decl, QueueDecl) and s.decl.role is Role.MAIN
    }
    return [s for s in topology.subscribers() if s.backfill and s.name in created]


def selection_of(sub: Subscriber, now: datetime | None = None) -> Selection:
    assert sub.backfill is not None
    now = now or datetime.now(UTC)
    return Selection(since=now - timedelta(milliseconds=parse_ms(sub.backfill)))


async def backfill(
    conn: AbstractConnection, topology: Topology, sub: Subscriber, *, dry_run: bool = False
) -> Outcome:
    """Copy (or, dry, count) *sub*'s backfill into its queue."""
    return await replay(conn, topology, sub, selection_of(sub), dry_run=dry_run)
