"""Which events of a log a reader or a replay takes: pure decisions, no I/O.

A `Selection` is the filters of `bus history` and `bus replay` (time window, type patterns, id,
correlation id). `replay_patterns` says which routing keys of an exchange reach a subscriber's
queue, by RabbitMQ's own rule for the exchange's type. Stream timestamps (where a read starts)
are those of whole chunks, written when the broker stored them, so a read starts `MARGIN`
earlier than `since` and the exact window is applied here, to each event's own time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bus.durations import parse_ms
from bus.topology.model import ExchangeType, Subscriber, Topology
from bus.topology.routing import matches

MARGIN = timedelta(seconds=60)  # chunk timestamps and producers' clocks: read this much earlier


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """``"1h"`` (that long ago) or an RFC 3339 time (``2026-05-01T12:00:00Z``; a date alone is
    midnight UTC); raises ValueError saying what it expects."""
    now = now or datetime.now(UTC)
    try:
        return now - timedelta(milliseconds=parse_ms(text))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f'"{text}" is neither a duration (30m, 1h, 7d) nor an RFC 3339 time '
            "(2026-05-01T12:00:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Selection:
    """Filters on a log; an event passes when it passes every one given."""

    since: datetime | None = None
    until: datetime | None = None
    types: tuple[str, ...] = ()  # type patterns, RabbitMQ's topic rule
    id: str | None = None
    correlation_id: str | None = None

    def start(self) -> datetime | None:
        """Where a read starts: a little before `since` (None: the beginning of the log)."""
        return None if self.since is None else self.since - MARGIN

    def takes(
        self, type_: str, time: datetime | None, id_: str, correlation_id: str | None
    ) -> bool:
        if self.id is not None and id_ != self.id:
            return False
        if self.correlation_id is not None and correlation_id != self.correlation_id:
            return False
        if self.types and not any(matches(p, type_) for p in self.types):
            return False
        if time is not None:
            if self.since is not None and time < self.since:
                return False
            if self.until is not None and time > self.until:
                return False
        return True


def replay_patterns(topology: Topology, sub: Subscriber, exchange: str) -> list[str]:
    """The binding keys by which *exchange* routes to *sub*'s queue."""
    return [b.key for b in sub.bindings if b.exchange == exchange]


def routes(kind: ExchangeType, patterns: Sequence[str], type_: str) -> bool:
    """Does an exchange of *kind* with these binding keys route an event of *type_*?"""
    if not patterns:
        return False
    if kind is ExchangeType.FANOUT:
        return True
    if kind is ExchangeType.DIRECT:
        return type_ in patterns
    return any(matches(p, type_) for p in patterns)


def replay_exchanges(topology: Topology, sub: Subscriber) -> list[str]:
    """The exchanges *sub* is bound to, in the order of its bindings."""
    return list(dict.fromkeys(b.exchange for b in sub.bindings))


def without_history(topology: Topology, sub: Subscriber) -> list[str]:
    """Exchanges *sub* is bound to that keep no history."""
    return [x for x in replay_exchanges(topology, sub) if topology.history(x) is None]
