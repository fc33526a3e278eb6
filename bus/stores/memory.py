"""An in-process store, for tests and benchmarks."""

from __future__ import annotations

import time

from bus.stores.base import DEFAULT_LEASE, DEFAULT_RETENTION, Claim


class MemoryStore:
    def __init__(self) -> None:
        self._done: dict[tuple[str, str], float] = {}
        self._leases: dict[tuple[str, str], float] = {}
        self._holds: dict[tuple[str, str], tuple[str, float]] = {}

    async def claim(self, subscriber: str, event_id: str, lease: float = DEFAULT_LEASE) -> Claim:
        key = (subscriber, event_id)
        if key in self._done:
            return Claim.DONE
        now = time.monotonic()
        if self._leases.get(key, 0.0) > now:
            return Claim.BUSY
        self._leases[key] = now + lease
        return Claim.CLAIMED

    async def renew(self, subscriber: str, event_id: str, lease: float = DEFAULT_LEASE) -> None:
        key = (subscriber, event_id)
        if key in self._leases:
            self._leases[key] = time.monotonic() + lease

    async def complete(self, subscriber: str, event_id: str) -> None:
        key = (subscriber, event_id)
        self._leases.pop(key, None)
        self._done[key] = time.time()

    async def release(self, subscriber: str, event_id: str) -> None:
        self._leases.pop((subscriber, event_id), None)

    async def prune(self, older_than: float = DEFAULT_RETENTION) -> int:
        cutoff = time.time() - older_than
        old = [k for k, t in self._done.items() if t < cutoff]
        for k in old:
            del self._done[k]
        return len(old)

    async def hold(self, subscriber: str, key: str, event_id: str) -> None:
        since = self._holds.get((subscriber, key), ("", time.time()))[1]
        self._holds[(subscriber, key)] = (event_id, since)

    async def unhold(self, subscriber: str, key: str, event_id: str) -> None:
        if self._holds.get((subscriber, key), ("",))[0] == event_id:
            del self._holds[(subscriber, key)]

    async def holds(self, subscriber: str) -> list[tuple[str, str, float]]:
        return [(k, e, t) for (s, k), (e, t) in self._holds.items() if s == subscriber]

    async def close(self) -> None:
        return None
