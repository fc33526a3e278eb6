"""The saga instances of a subscriber's store, for people: what `bus saga list | show` print and
the `bus ui` saga pages and API return, read the same way.

Each instance is one JSON object: `saga`, `key`, `status`, `state` (the model's JSON),
`version`, `created_at`, `updated_at`, and with its detail `steps` (each `event_id`, `type`,
`at`) and `timeouts` (the pending ones: `id`, `type`, `due_at`). Times are RFC 3339 in UTC.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from bus.errors import ConfigError
from bus.sagas import open_saga_store
from bus.sagas.store import Detail, Instance, SagaStore
from bus.stores import open_store


class SagaNotFound(ConfigError):
    """No such saga, or no instance with that key, in the subscriber's store."""


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def instance_json(i: Instance, d: Detail | None = None) -> dict[str, Any]:
    """An instance as one JSON object; with *d*, its steps and pending timeouts too."""
    out: dict[str, Any] = {
        "saga": i.saga, "key": i.key, "status": i.status, "state": json.loads(i.state),
        "version": i.version, "created_at": stamp(i.created_at), "updated_at": stamp(i.updated_at),
    }  # fmt: skip
    if d is not None:
        out["steps"] = [{"event_id": s.event_id, "type": s.type, "at": stamp(s.at)}
                        for s in d.steps]  # fmt: skip
        out["timeouts"] = [{"id": t.id, "type": t.type, "due_at": stamp(t.due_at)}
                           for t in d.timeouts]  # fmt: skip
    return out


@contextlib.asynccontextmanager
async def reading(store_url: str) -> AsyncIterator[SagaStore]:
    """The saga tables of the store at *store_url*, read-only, closed after (the SQLite saga
    store's own connection would otherwise keep the process alive)."""
    store = await open_store(store_url)
    sagas = None
    try:
        sagas = await open_saga_store(store)
        yield sagas
    finally:
        if sagas is not None:
            await sagas.close()
        await store.close()


async def sagas_of(sagas: SagaStore, subscriber: str) -> dict[str, dict[str, int]]:
    """Saga name -> instances by status (`running`, `completed`), for the sagas with any."""
    out: dict[str, dict[str, int]] = {}
    for (saga, status), n in sorted((await sagas.counts(subscriber)).items()):
        out.setdefault(saga, {"running": 0, "completed": 0})[status] = n
    return out


async def _known(sagas: SagaStore, subscriber: str, saga: str) -> None:
    """SagaNotFound when the store holds instances of other sagas but none of *saga*: a
    misspelt name. A store with no instances at all says nothing (a saga not started yet)."""
    names = await sagas_of(sagas, subscriber)
    if names and saga not in names:
        raise SagaNotFound(
            f"subscriber {subscriber!r} has no saga {saga!r} "
            f"(the sagas with instances: {', '.join(names)})"
        )


async def listing(
    sagas: SagaStore, subscriber: str, *, saga: str | None = None, status: str | None = None,
    limit: int = 100, detail: bool = True,
) -> list[dict[str, Any]]:  # fmt: skip
    """The instances newest first, each with its steps and timeouts when *detail*."""
    if saga is not None:
        await _known(sagas, subscriber, saga)
    out = []
    for i in await sagas.instances(subscriber, saga, status, limit):
        d = await sagas.detail(subscriber, i.saga, i.key, 0.0) if detail else None
        out.append(instance_json(i, d))
    return out


async def showing(sagas: SagaStore, subscriber: str, saga: str, key: str) -> dict[str, Any]:
    """One instance with its steps and pending timeouts; SagaNotFound when there is none."""
    found = await sagas.detail(subscriber, saga, key, 0.0)
    if found is None:
        await _known(sagas, subscriber, saga)
        raise SagaNotFound(f"no {saga!r} saga with key {key!r} in subscriber {subscriber!r}")
    return instance_json(found.instance, found)
