"""What a saga host needs from the database: load an instance, commit a step, report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bus.sagas.saga import Outgoing, Timeout


class Conflict(Exception):
    """Another step of the instance committed first: load it again and rerun the step."""


@dataclass(frozen=True, slots=True)
class Instance:
    subscriber: str
    saga: str
    key: str
    state: str  # the model's JSON
    version: int
    status: str  # running | completed
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class StepRecord:
    event_id: str
    type: str
    at: float
    version: int


@dataclass(frozen=True, slots=True)
class PendingTimeout:
    id: str
    type: str
    due_at: float


@dataclass(frozen=True, slots=True)
class Detail:
    """`bus saga show`: an instance, every step it ran, the timeouts still to fire."""

    instance: Instance
    steps: tuple[StepRecord, ...]
    timeouts: tuple[PendingTimeout, ...]


@dataclass(frozen=True, slots=True)
class UnsentTimeout:
    """A timeout committed but not yet handed to the broker's delay levels."""

    id: str
    subscriber: str
    type: str
    data: Any
    due_at: float
    correlation_id: str | None
    causation_id: str | None


@dataclass(frozen=True)
class Transition:
    """One step's effects, committed together or not at all: the new state and status, the
    step's record, its processed mark, its outbox rows and its timeouts."""

    subscriber: str
    saga: str
    key: str
    event_id: str
    event_type: str
    state: str
    status: str
    version: int  # the version the step read; 0: a new instance
    at: float
    correlation_id: str
    source: str
    publishes: Sequence[Outgoing] = field(default=())
    timeouts: Sequence[Timeout] = field(default=())


class SagaStore(Protocol):
    durable: bool  # True: publishes and timeouts go through the database (relayed after)

    async def load(self, subscriber: str, saga: str, key: str) -> Instance | None: ...

    async def commit(self, t: Transition) -> None:
        """Apply *t* in one transaction; `Conflict` when the version moved on."""
        ...

    async def instances(
        self, subscriber: str, saga: str | None = None, status: str | None = None,
        limit: int = 100,
    ) -> list[Instance]: ...  # fmt: skip

    async def detail(self, subscriber: str, saga: str, key: str, now: float) -> Detail | None: ...

    async def counts(self, subscriber: str) -> dict[tuple[str, str], int]:
        """Instances by (saga, status)."""
        ...

    async def unsent_timeouts(self, limit: int = 100) -> list[UnsentTimeout]: ...

    async def mark_sent(self, ids: Sequence[str], at: float) -> None: ...

    async def prune(self, older_than: float, now: float) -> int:
        """Remove completed instances (and their steps and timeouts) last changed before
        `now - older_than`; returns how many instances."""
        ...

    async def close(self) -> None: ...
