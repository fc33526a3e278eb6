"""One event's story: the event as its log keeps it, and where it stands now for each
subscriber its exchange routes it to.

For each such subscriber, in this order: handled (its processed table says done), parked (in
its DLQ, with the DLQ's failure story), waiting in a retry queue (with the attempt and the
failure that sent it there), being handled (claimed), or not handled yet (still queued, or
handled by processes whose store this UI does not read). Looking into a DLQ uses the grouped
browse the DLQ page uses; looking into a retry queue reads it like a browse and returns what it
read (on RabbitMQ 4 a quorum queue counts that as one delivery of each message read).
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bus.envelope import H_TRACEPARENT
from bus.errors import ConfigError, NoHistory
from bus.history.reader import Entry, read_log
from bus.history.replay import Outcome, replay
from bus.history.select import Selection, parse_when, routes, without_history
from bus.ops.dlq import Parked
from bus.topology.model import Subscriber, Topology
from bus.ui.api import plain
from bus.ui.backend import Backend, NotFound
from bus.ui.browse import Summary, attempts_number, scan
from bus.ui.handled import CLAIMED, DONE, states

log = logging.getLogger(__name__)

HANDLED, PARKED, RETRYING, HANDLING, PENDING = (
    "handled",
    "parked",
    "retrying",
    "handling",
    "pending",
)
UNKNOWN = "unknown"  # the processed table was not readable, and it is neither parked nor waiting


@dataclass(frozen=True, slots=True)
class Standing:
    """Where an event stands for one subscriber."""

    subscriber: str
    state: str  # HANDLED, PARKED, RETRYING, HANDLING, PENDING or UNKNOWN
    queue: str | None = None  # the DLQ or retry queue it sits in
    reason: str = ""  # bus-dead-reason (parked)
    attempts: int | None = None
    exception_type: str = ""
    exception_message: str = ""
    failed_at: str = ""
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def when_of(text: str | None, name: str) -> datetime | None:
    """A form's or query's `since`/`until` (empty: none); ConfigError saying what it expects."""
    if not text:
        return None
    try:
        return parse_when(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def check_exchange(topology: Topology, exchange: str) -> None:
    """NotFound for an unknown exchange, NoHistory for one that keeps none."""
    if exchange not in topology.exchanges:
        raise NotFound(f"no exchange {exchange!r} in {topology.source}")
    if topology.history(exchange) is None:
        raise NoHistory(f"exchange {exchange!r} keeps no history")


async def search(
    backend: Backend, exchange: str, selection: Selection, limit: int
) -> list[dict[str, Any]]:
    """The newest *limit* events of *exchange*'s log passing *selection*, oldest first, each
    as `bus history --json` prints it."""
    check_exchange(backend.topology, exchange)
    found: deque[dict[str, Any]] = deque(maxlen=limit)
    async for entry in read_log(await backend.connection(), exchange, selection):
        found.append(entry.event.as_json())
    return list(found)


def published(entry: Entry) -> dict[str, Any]:
    """The event as it was published: its envelope, data and headers (`x-stream-offset` aside),
    and its position in the log."""
    e = entry.event
    headers = {k: plain(v) for k, v in e.headers.items()}
    return {**e.as_json(), "traceparent": headers.get(H_TRACEPARENT), "offset": e.offset,
            "headers": headers}  # fmt: skip


def reached(topology: Topology, exchange: str, event_type: str) -> list[Subscriber]:
    """The subscribers *exchange* routes an event of *event_type* to."""
    kind = topology.exchanges[exchange].type
    out = []
    for sub in topology.subscribers():
        keys = [b.key for b in sub.bindings if b.exchange == exchange]
        if routes(kind, keys, event_type):
            out.append(sub)
    return out


async def find(
    backend: Backend, exchange: str, event_id: str, since: datetime | None = None
) -> Entry:
    """The first entry of *exchange*'s log with *event_id* (NotFound when none)."""
    conn = await backend.connection()
    entries = read_log(conn, exchange, Selection(since=since, id=event_id))
    async with contextlib.aclosing(entries):  # stop reading at the first: the channel closes
        async for entry in entries:
            return entry
    raise NotFound(f"no event {event_id!r} in the history of {exchange!r}")


def _failure(sub: str, state: str, queue: str, p: Parked | Summary, note: str = "") -> Standing:
    return Standing(
        sub, state, queue, p.reason, attempts_number(p.attempts), p.exception_type,
        p.exception_message, p.failed_at, note,
    )  # fmt: skip


async def _parked(backend: Backend, sub: Subscriber, event_id: str) -> Standing | None:
    browse = await backend.dlq(sub.name)
    for g in browse.groups:
        for m in g.messages:
            if m.id == event_id:
                return _failure(sub.name, PARKED, sub.dlq, m)
    return None


async def _retrying(backend: Backend, sub: Subscriber, event_id: str) -> Standing | None:
    conn = await backend.connection()
    for delay in sub.delays:
        queue = sub.retry_queue(delay)
        async with backend.cache.lock(queue):
            _, found = await scan(conn, queue, backend.config.browse_limit, until_id=event_id)
        for p in found:
            if p.id == event_id:
                return _failure(sub.name, RETRYING, queue, p, f"waits {delay}, then runs again")
    return None


async def standings(
    backend: Backend, exchange: str, event_type: str, event_id: str
) -> list[Standing]:
    """Where *event_id* stands for every subscriber *exchange* routes its type to."""
    subs = reached(backend.topology, exchange, event_type)
    done = await states(backend.config.settings.store_url, [s.name for s in subs], event_id)
    out = []
    for sub in subs:
        state = None if done is None else done.get(sub.name)
        if state == DONE:
            out.append(Standing(sub.name, HANDLED, note="its processed table records it"))
            continue
        found = await _parked(backend, sub, event_id) or await _retrying(backend, sub, event_id)
        if found is not None:
            out.append(found)
        elif state == CLAIMED:
            out.append(Standing(sub.name, HANDLING, sub.queue, note="a handler is running it"))
        elif done is None:
            out.append(Standing(sub.name, UNKNOWN, note="the processed table is not readable "
                                "from here; not parked, not waiting for a retry"))  # fmt: skip
        else:
            out.append(Standing(sub.name, PENDING, sub.queue, note="not handled yet (or handled "
                                "by processes with another store)"))  # fmt: skip
    return out


async def replay_into(
    backend: Backend, name: str, selection: Selection, *, dry_run: bool, again: bool, who: str
) -> Outcome:
    """`bus replay` from the UI: copy the selected history events into *name*'s queue only."""
    sub = backend.subscriber(name)
    missing = without_history(backend.topology, sub)
    if missing:
        raise NoHistory(f"subscriber {name!r} is bound to {missing[0]!r}, which keeps no history")
    out = await replay(await backend.connection(), backend.topology, sub, selection,
                       dry_run=dry_run, again=again)  # fmt: skip
    log.info(
        "ui: %s replayed %d history event(s) into %s%s", who, out.total, sub.queue,
        " (dry run)" if dry_run else "",
        extra={"who": who, "action": "history.replay", "subscriber": name,
               "dry_run": dry_run, "again": again, "id": selection.id},
    )  # fmt: skip
    return out
