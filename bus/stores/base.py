"""The store interface."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, runtime_checkable

# Seconds a claim holds before another replica may take it over. The runtime renews the lease
# while the handler runs, so a live handler keeps it however long it takes, and a crashed
# process blocks the id for at most this long.
DEFAULT_LEASE = 30.0
DEFAULT_RETENTION = 7 * 86400.0
DEFAULT_SAGA_RETENTION = 7 * 86400.0  # completed saga instances are kept this long


class Claim(StrEnum):
    CLAIMED = "claimed"  # ours: run the handler
    DONE = "done"  # already processed: ack without running the handler
    BUSY = "busy"  # another replica is processing it right now


class Store(Protocol):
    async def claim(self, subscriber: str, event_id: str, lease: float = DEFAULT_LEASE) -> Claim:
        """Take *event_id* for processing, unless it is done or leased by someone else."""
        ...

    async def renew(self, subscriber: str, event_id: str, lease: float = DEFAULT_LEASE) -> None:
        """Extend a claim we hold (a heartbeat while the handler runs)."""
        ...

    async def complete(self, subscriber: str, event_id: str) -> None:
        """Record *event_id* as processed: later deliveries are duplicates."""
        ...

    async def release(self, subscriber: str, event_id: str) -> None:
        """Forget a claim after a failed attempt, so a retry can run the handler."""
        ...

    async def prune(self, older_than: float = DEFAULT_RETENTION) -> int:
        """Delete done records older than *older_than* seconds; returns how many."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class HoldStore(Protocol):
    """Where an ordered subscriber's held keys outlive the replica that held them."""

    async def hold(self, subscriber: str, key: str, event_id: str) -> None:
        """*key* waits for *event_id*, which went to retry (kept since the first hold)."""
        ...

    async def unhold(self, subscriber: str, key: str, event_id: str) -> None:
        """*event_id* succeeded or parked: its key no longer waits for it."""
        ...

    async def holds(self, subscriber: str) -> list[tuple[str, str, float]]:
        """Every held key of *subscriber*: (key, event id, since as epoch seconds)."""
        ...
