"""What a relay needs from the database holding `bus_outbox`, whichever it is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Row:
    """One outbox row as written, before the relay checks it. `data` is the JSON text."""

    seq: int
    id: str
    type: str
    data: str
    source: str
    created_at: datetime
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class SetAside:
    """A row the relay could not publish, kept with its reason."""

    id: str
    type: str
    failure: str
    failed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Status:
    """`bus outbox status`: rows waiting for a relay, the oldest one's age, rows set aside."""

    pending: int
    oldest_age_seconds: float
    set_aside: int
    set_aside_rows: tuple[SetAside, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "oldest_age_seconds": round(self.oldest_age_seconds, 3),
            "set_aside": self.set_aside,
            "set_aside_rows": [
                {
                    "id": r.id,
                    "type": r.type,
                    "failure": r.failure,
                    "failed_at": r.failed_at.isoformat() if r.failed_at else None,
                }
                for r in self.set_aside_rows
            ],
        }


class Claim(Protocol):
    """Rows this relay alone may publish now, in the order to publish them."""

    @property
    def rows(self) -> Sequence[Row]: ...

    async def finish(self, done: Sequence[int], set_aside: Sequence[tuple[int, str]]) -> None:
        """Delete the published rows (by seq) and set the others aside with their reasons."""

    async def abandon(self) -> None:
        """Give the rows back untouched (they are published again later)."""


class OutboxStore(Protocol):
    """The relay's side of `bus_outbox`: claim, wait for more, report."""

    async def claim(self, limit: int) -> Claim: ...

    async def wait(self, timeout: float) -> None:
        """Return when rows may have arrived (a NOTIFY), or after *timeout* seconds."""

    async def status(self, sample: int = 20) -> Status: ...

    async def retry(self, ids: Sequence[str] | None) -> int:
        """Put set-aside rows back in line (all of them when *ids* is None); returns how many."""

    async def close(self) -> None: ...
