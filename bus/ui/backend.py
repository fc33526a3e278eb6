"""Everything the pages and the API read or do, over one AMQP connection of their own.

Reads go through `bus.ops.status`, the browse cache and `bus.ui.overview`; actions through
`bus.ops.dlq` (confirmed republish, then ack). Every action is logged with who did it and to what.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractConnection

from bus.amqp.connection import connect_plain
from bus.amqp.plumbing import close_quietly
from bus.consume.handlers import import_router
from bus.consume.router import Router
from bus.errors import ConfigError
from bus.ops import dlq
from bus.ops.dlq import Parked, group_key
from bus.ops.status import collect
from bus.produce.validation import EventChecker
from bus.topology.model import Subscriber, Topology
from bus.ui.browse import Browse, BrowseCache, depth, returned, scan
from bus.ui.config import UiConfig
from bus.ui.edit import EDITED_AT, EDITED_BY, Checked, check_edit
from bus.ui.overview import HeadAges, OutboxProbe, scheduler_status

log = logging.getLogger(__name__)


class NotFound(ConfigError):
    """No such subscriber, or no such message in its DLQ."""


@dataclass(frozen=True)
class Selection:
    """What to replay: given ids, one exception group, or everything."""

    ids: Collection[str] | None = None
    group: str | None = None

    def describe(self) -> str:
        if self.ids is not None:
            return f"ids {', '.join(sorted(self.ids))}"
        return f"group {self.group}" if self.group is not None else "all"


class Backend:
    """The broker (and outbox) side of `bus ui`."""

    def __init__(self, config: UiConfig, topology: Topology) -> None:
        self.config = config
        self.topology = topology
        self.cache = BrowseCache(config.browse_limit, config.browse_ttl)
        self.checker = EventChecker(topology)
        self._heads = HeadAges()
        self._outbox = OutboxProbe(config.settings.outbox_url)
        self._conn: AbstractConnection | None = None
        self._connecting = asyncio.Lock()

    async def connection(self) -> AbstractConnection:
        async with self._connecting:
            if self._conn is None or self._conn.is_closed:
                self._conn = await connect_plain(self.config.settings.url, "ui", timeout=5.0)
            return self._conn

    async def close(self) -> None:
        await self._outbox.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            await close_quietly(conn)

    def subscriber(self, name: str) -> Subscriber:
        try:
            return self.topology.subscriber(name)
        except KeyError:
            raise NotFound(f"no subscriber {name!r} in {self.topology.source}") from None

    # --- reads ----------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """`bus status --json` (each with its DLQ's oldest age), the outbox, the scheduler."""
        conn = await self.connection()
        subscribers = []
        for st in await collect(conn, self.topology):
            row = st.as_dict()
            async with self.cache.lock(st.dlq.name):
                age = await self._heads.age(conn, st.dlq.name, st.dlq.ready)
            row["dlq_oldest_age_seconds"] = age
            subscribers.append(row)
        return {
            "subscribers": subscribers,
            "outbox": await self._outbox.status(),
            "scheduler": await scheduler_status(conn, self.topology, self.config.lock_queue),
        }

    async def dlq(self, name: str) -> Browse:
        sub = self.subscriber(name)
        return await self.cache.get(await self.connection(), sub.dlq)

    async def story(self, name: str, id: str) -> Parked:
        sub = self.subscriber(name)
        async with self.cache.lock(sub.dlq):
            _, found = await scan(await self.connection(), sub.dlq, 10**9, until_id=id)
        for p in reversed(found):
            if p.id == id:
                return p
        raise NotFound(f"no message {id!r} in {sub.dlq}")

    def router(self, name: str) -> Router:
        """The subscriber's router, imported from its `handlers:` (ConfigError when it cannot)."""
        return import_router(self.subscriber(name).handlers)

    # --- actions --------------------------------------------------------------------------

    async def replay(
        self, name: str, selection: Selection, *, who: str, rate: float | None = None
    ) -> tuple[list[Parked], list[str]]:
        """Replay the selection; returns (replayed, ids asked for but not found)."""
        sub = self.subscriber(name)
        key = selection.group
        where = (lambda p: group_key(p) == key) if key is not None else None
        ids = set(selection.ids) if selection.ids is not None else None
        conn = await self.connection()
        async with self.cache.lock(sub.dlq):
            before = await depth(conn, sub.dlq)
            try:
                done = await dlq.replay(conn, sub, ids, rate=rate, where=where)
                await returned(conn, sub.dlq, before - len(done))  # the ones left, in place
            finally:
                self.cache.forget(sub.dlq)
        missing = sorted(ids - {p.id for p in done}) if ids is not None else []
        log.info(
            "ui: %s replayed %d message(s) of %s (%s) to %s",
            who, len(done), sub.dlq, selection.describe(), sub.queue,
            extra={"who": who, "action": "dlq.replay", "subscriber": name,
                   "ids": [p.id for p in done], "missing": missing},
        )  # fmt: skip
        return done, missing

    async def purge(self, name: str, *, who: str) -> int:
        sub = self.subscriber(name)
        async with self.cache.lock(sub.dlq):
            try:
                count = await dlq.purge(await self.connection(), sub)
            finally:
                self.cache.forget(sub.dlq)
        log.warning("ui: %s purged %d message(s) from %s", who, count, sub.dlq,
                    extra={"who": who, "action": "dlq.purge", "subscriber": name})  # fmt: skip
        return count

    def check(self, name: str, event_type: str, text: str) -> Checked:
        try:
            router = self.router(name)
        except ConfigError as exc:  # never send what could not be checked
            return Checked(None, (f"cannot check against the handler's model: {exc}",))
        return check_edit(self.checker, router, event_type, text)

    async def edit_and_replay(self, name: str, id: str, text: str, *, who: str) -> Checked:
        """Validate the edited body as data of the parked event's type; when it passes,
        replay it under the same id."""
        sub = self.subscriber(name)
        event_type = (await self.story(name, id)).type
        checked = self.check(name, event_type, text)
        if checked.body is None:
            return checked
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        conn = await self.connection()
        async with self.cache.lock(sub.dlq):
            before = await depth(conn, sub.dlq)
            try:
                original = await dlq.replace(
                    conn, sub, id, checked.body, {EDITED_AT: stamp, EDITED_BY: who}
                )
                await returned(conn, sub.dlq, before - (original is not None))
            finally:
                self.cache.forget(sub.dlq)
        if original is None:
            raise NotFound(f"no message {id!r} in {sub.dlq}")
        log.info(
            "ui: %s edited and replayed %s (%s) of %s: %s -> %s",
            who, id, event_type, sub.dlq, original.body[:1000].decode(errors="replace"),
            checked.body[:1000].decode(errors="replace"),
            extra={"who": who, "action": "dlq.edit", "subscriber": name, "event_id": id},
        )  # fmt: skip
        return checked
