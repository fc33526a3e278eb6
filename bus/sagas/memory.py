"""The saga store in memory (`memory://`, TestBus): the same rules, nothing durable.

Its publishes and timeouts are not written anywhere: the host sends them right after the
commit (`durable = False`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from bus.sagas.store import (
    Conflict,
    Detail,
    Instance,
    PendingTimeout,
    StepRecord,
    Transition,
    UnsentTimeout,
)

Ident = tuple[str, str, str]


class MemorySagaStore:
    durable = False

    def __init__(self) -> None:
        self._instances: dict[Ident, Instance] = {}
        self._steps: dict[Ident, list[StepRecord]] = {}
        self._timeouts: dict[Ident, list[PendingTimeout]] = {}

    def get(self, subscriber: str, saga: str, key: str) -> Instance | None:
        return self._instances.get((subscriber, saga, key))

    async def load(self, subscriber: str, saga: str, key: str) -> Instance | None:
        return self._instances.get((subscriber, saga, key))

    async def commit(self, t: Transition) -> None:
        ident = (t.subscriber, t.saga, t.key)
        found = self._instances.get(ident)
        if (found.version if found else 0) != t.version:
            raise Conflict(f"{t.saga} {t.key}: version {t.version} is no longer the latest")
        if found is None:
            found = Instance(*ident, t.state, 0, t.status, t.at, t.at)
        self._instances[ident] = replace(
            found, state=t.state, version=t.version + 1, status=t.status, updated_at=t.at
        )
        self._steps.setdefault(ident, []).append(
            StepRecord(t.event_id, t.event_type, t.at, t.version + 1)
        )
        self._timeouts.setdefault(ident, []).extend(
            PendingTimeout(tm.id, tm.type, t.at + tm.seconds) for tm in t.timeouts
        )

    async def instances(
        self, subscriber: str, saga: str | None = None, status: str | None = None,
        limit: int = 100,
    ) -> list[Instance]:  # fmt: skip
        found = [
            i for i in self._instances.values()
            if i.subscriber == subscriber and saga in (None, i.saga) and status in (None, i.status)
        ]  # fmt: skip
        return sorted(found, key=lambda i: -i.updated_at)[:limit]

    async def detail(self, subscriber: str, saga: str, key: str, now: float) -> Detail | None:
        ident = (subscriber, saga, key)
        found = self._instances.get(ident)
        if found is None:
            return None
        steps = tuple(self._steps.get(ident, ()))
        ran = {s.event_id for s in steps}
        pending = tuple(t for t in self._timeouts.get(ident, ()) if t.id not in ran)
        return Detail(found, steps, pending if found.status == "running" else ())

    async def counts(self, subscriber: str) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for i in self._instances.values():
            if i.subscriber == subscriber:
                out[(i.saga, i.status)] = out.get((i.saga, i.status), 0) + 1
        return out

    async def unsent_timeouts(self, limit: int = 100) -> list[UnsentTimeout]:
        return []  # sent by the host right after the commit

    async def mark_sent(self, ids: Sequence[str], at: float) -> None:
        return None

    async def prune(self, older_than: float, now: float) -> int:
        old = [
            ident for ident, i in self._instances.items()
            if i.status == "completed" and i.updated_at < now - older_than
        ]  # fmt: skip
        for ident in old:
            del self._instances[ident]
            self._steps.pop(ident, None)
            self._timeouts.pop(ident, None)
        return len(old)

    async def close(self) -> None:
        return None
