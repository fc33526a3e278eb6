"""Observe the broker and apply a plan. The only topology module that talks to RabbitMQ.

AMQP cannot read a queue's arguments back, so drift is detected the way the broker itself
checks it: an equivalent declaration on a throwaway channel succeeds (a no-op for an existing
object) and a different one fails with 406 PRECONDITION_FAILED, whose text names the argument.
The failure closes only that throwaway channel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from bus.amqp import plumbing
from bus.amqp.plumbing import close_quietly, queue_counts
from bus.topology import migrate, records
from bus.topology.diff import Action, Observed, Step
from bus.topology.plan import (
    BindingDecl,
    Decl,
    ExchangeBindingDecl,
    ExchangeDecl,
    QueueDecl,
    Role,
    is_delay_hand_off,
    is_delay_object,
    is_history_object,
    owned_by,
    retired_history,
)
from bus.topology.release import Release

log = logging.getLogger(__name__)


def release(conn: AbstractConnection) -> Release:
    """The RabbitMQ release *conn* is connected to (from its `version` server property)."""
    transport = conn.transport
    version = transport.connection.server_properties.get("version") if transport else None
    return Release.parse(version if isinstance(version, str | bytes) else None)


async def observe(conn: AbstractConnection, want: Sequence[Decl]) -> Observed:
    """What exists of *want* (and of what the last apply recorded, subscribers removed from the
    file included), without changing anything."""
    recorded, removed = await _recorded(conn, want)
    exchanges: set[str] = set()
    queues: dict[str, int] = {}
    consumers: dict[str, int] = {}
    drift: dict[str, str] = {}
    seen: set[str] = set()
    for d in [*want, *recorded]:
        if d.key in seen or isinstance(d, BindingDecl):
            continue
        seen.add(d.key)
        if isinstance(d, ExchangeDecl):
            if await _exists_exchange(conn, d.name):
                exchanges.add(d.name)
                problem = await _probe(conn, d)
                if problem:
                    drift[d.key] = problem
        elif isinstance(d, QueueDecl):
            counts = await queue_counts(conn, d.name)
            if counts is not None:
                queues[d.name] = counts.messages
                consumers[d.name] = counts.consumers
                problem = await _probe(conn, d) if d in want else None
                if problem:
                    drift[d.key] = problem
    return Observed(frozenset(exchanges), queues, drift, tuple(recorded), consumers, tuple(removed))


async def _recorded(conn: AbstractConnection, want: Sequence[Decl]) -> tuple[list[Decl], list[str]]:
    """What the records of *want*'s subscribers name (bus.topology.records), and the queues of
    the subscribers applied with them that the file no longer declares."""
    mains = set(_main_queues(want).values())
    recorded: list[Decl] = []
    siblings: set[str] = set()
    shared: dict[str, QueueDecl] = {}
    for main in sorted(mains):
        record = await records.read(conn, main)
        if record is not None:
            recorded += record.objects
            siblings |= record.applied_with
            shared.update((q.name, q) for q in record.shared)
    removed = []
    for main in sorted(siblings - mains):  # applied with ours, gone from the file since
        record = await records.read(conn, main)
        if record is not None and record.applied_with & mains:  # not since applied elsewhere
            removed.append(main)
            recorded += record.objects
    wanted = {d.name for d in want if isinstance(d, QueueDecl)}
    for retired in [*retired_history(want), *shared.values()]:  # a log or hand-off queue
        if retired.name not in wanted and await queue_depth(conn, retired.name) is not None:
            recorded.append(retired)  # of an exchange, a `history:` or an event now gone
    return recorded, removed


async def queue_depth(conn: AbstractConnection, name: str) -> int | None:
    """Ready messages in queue *name*, or None when it does not exist."""
    counts = await queue_counts(conn, name)
    return None if counts is None else counts.messages


async def _exists_exchange(conn: AbstractConnection, name: str) -> bool:
    channel = await conn.channel(publisher_confirms=False)
    try:
        await channel.declare_exchange(name, passive=True)
        return True
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        await close_quietly(channel)


async def _probe(conn: AbstractConnection, decl: ExchangeDecl | QueueDecl) -> str | None:
    """None when *decl* matches the live object, else the broker's complaint in one line."""
    channel = await conn.channel(publisher_confirms=False)
    try:
        await _declare(channel, decl)
        return None
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        return _broker_text(exc)
    finally:
        await close_quietly(channel)


async def _declare(channel: AbstractChannel, decl: ExchangeDecl | QueueDecl) -> None:
    if isinstance(decl, ExchangeDecl):
        await channel.declare_exchange(
            decl.name, decl.type, durable=True, arguments=dict(decl.arguments)
        )
    else:
        await channel.declare_queue(decl.name, durable=True, arguments=dict(decl.arguments))


async def apply(
    conn: AbstractConnection,
    steps: Sequence[Step],
    want: Sequence[Decl],
    removed: Sequence[str] = (),
) -> list[str]:
    """Carry out *steps* (creations, DLQ migrations and prunes), then record *want* as what we
    own; returns the DLQ migrations that could not be made now (one line each). *removed*
    names the queues of subscribers gone from the file (`Observed.removed`): their records
    keep what is left of them, or go once nothing is.

    Drifted objects are left alone: their steps carry the broker's complaint and the caller
    reports them. Bindings are idempotent, so every declared binding is asserted again.
    """
    deleted: set[str] = set()
    channel = await conn.channel(publisher_confirms=False)
    try:
        for step in steps:
            d = step.decl
            if step.action is Action.CREATE and isinstance(d, ExchangeDecl | QueueDecl):
                log.debug("creating %s", d.key)
                await _declare(channel, d)
        drifted = {s.decl.key for s in steps if s.action is Action.DRIFT}
        await _bind(channel, want, drifted)
        for step in steps:
            if step.action is Action.DELETE and await _delete(channel, step):
                deleted.add(step.decl.key)
    finally:
        await close_quietly(channel)
    refused = await _migrate(conn, steps, _main_queues(want))
    left = [
        s.decl
        for s in steps
        if s.action in (Action.KEEP, Action.REFUSE, Action.DRIFT)
        or (s.action is Action.DELETE and s.decl.key not in deleted)
    ]
    pending = await _forget_removed(conn, removed, {d.key for d in left})
    mains = _main_queues(want)
    siblings = [*mains.values(), *pending]
    shared = [
        d
        for d in [*want, *left]
        if isinstance(d, QueueDecl) and (is_delay_hand_off(d) or d.role is Role.HISTORY)
    ]
    owned = [
        d
        for d in want
        if d.key not in drifted and not is_delay_object(d) and not is_history_object(d)
    ]
    owned += left
    for owner, main in mains.items():
        mine = [d for d in owned if owned_by(d, owner, main)]
        await records.write(conn, main, mine, siblings, shared)
    for main in pending:
        record = await records.read(conn, main)
        if record is not None:
            await records.write(conn, main, record.objects, siblings)
    return refused


async def _forget_removed(
    conn: AbstractConnection, removed: Sequence[str], left: set[str]
) -> list[str]:
    """Shrink the records of subscribers removed from the file to what is left of them; delete
    a record (and its ordered partitions' reports) once none of its queues is. Returns the
    queues of the removed subscribers that still have something left."""
    pending = []
    for main in removed:
        record = await records.read(conn, main)
        if record is None:
            continue
        rest = [d for d in record.objects if d.key in left]
        if any(isinstance(d, QueueDecl) for d in rest):
            await records.write(conn, main, rest)
            pending.append(main)
            continue
        parts = [d for d in record.objects if isinstance(d, QueueDecl) and d.role is Role.PARTITION]
        for name in [records.state_queue(main), *(f"{records.state_queue(main)}.p{i}"
                                                  for i in range(len(parts)))]:  # fmt: skip
            async with plumbing.scratch_channel(conn) as channel:
                raw = await channel.get_underlay_channel()
                await raw.queue_delete(name)
    return pending


async def _migrate(
    conn: AbstractConnection, steps: Sequence[Step], mains: dict[str, str]
) -> list[str]:
    """Re-declare the DLQs whose steps say MIGRATE; finish any interrupted earlier move."""
    refused: list[str] = []
    for step in steps:
        d = step.decl
        if not isinstance(d, QueueDecl) or d.role is not Role.DLQ:
            continue
        if step.action is Action.MIGRATE:
            try:
                log.info("%s", await migrate.redeclare_keeping(conn, d, mains[d.owner]))
            except migrate.NotMigrated as exc:
                refused.append(str(exc))
        elif step.action in (Action.CREATE, Action.UNCHANGED):
            await migrate.restore(conn, d)
    return refused


async def _bind(channel: AbstractChannel, want: Sequence[Decl], drifted: set[str]) -> None:
    """Assert every binding of *want* (idempotent); none to or from a drifted object."""
    raw = await channel.get_underlay_channel()
    for d in want:
        if isinstance(d, BindingDecl):
            if not {f"queue {d.queue}", f"exchange {d.exchange}"} & drifted:
                await raw.queue_bind(
                    d.queue, d.exchange, routing_key=d.routing_key, arguments=dict(d.arguments)
                )
        elif isinstance(d, ExchangeBindingDecl) and f"exchange {d.destination}" not in drifted:
            await raw.exchange_bind(d.destination, d.source, routing_key=d.routing_key)


def _main_queues(decls: Sequence[Decl]) -> dict[str, str]:
    """Subscriber name -> its main queue."""
    return {d.owner: d.name for d in decls if isinstance(d, QueueDecl) and d.role is Role.MAIN}


async def _delete(channel: AbstractChannel, step: Step) -> bool:
    """Delete what *step* says; False when a queue was kept after all."""
    decl = step.decl
    log.debug("deleting %s", decl.key)
    raw = await channel.get_underlay_channel()
    if isinstance(decl, QueueDecl):
        # quorum queues refuse `if-empty`: check the depth right before deleting instead
        # (the planner already refused full and consumed queues; this narrows the window)
        ok = await raw.queue_declare(decl.name, passive=True)
        if ok.consumer_count or (ok.message_count and not step.drop):
            log.warning("kept %s: %d messages and %d consumers arrived since the plan",
                        decl.name, ok.message_count, ok.consumer_count)  # fmt: skip
            return False
        await raw.queue_delete(decl.name)
    elif isinstance(decl, BindingDecl):
        await raw.queue_unbind(
            decl.queue, decl.exchange, routing_key=decl.routing_key, arguments=dict(decl.arguments)
        )
    elif isinstance(decl, ExchangeBindingDecl):
        await raw.exchange_unbind(decl.destination, decl.source, routing_key=decl.routing_key)
    else:  # a subscriber's own exchange (bindings from it go with it)
        await raw.exchange_delete(decl.name)
    return True


# The records of what `apply` created: bus.topology.records (kept importable from here).
state_queue = records.state_queue


async def read_record(conn: AbstractConnection, main_queue: str) -> list[Decl]:
    record = await records.read(conn, main_queue)
    return [] if record is None else list(record.objects)


def _broker_text(exc: BaseException) -> str:
    text = str(exc.args[0] if exc.args else exc)
    return text.split(" - ", 1)[-1] if " - " in text else text


# `bus topology teardown`: remove what `apply` made, queues first, then the exchanges no other
# queue or exchange still uses.


@dataclass(frozen=True)
class Present:
    """An object of the topology that exists on the broker (`messages` for a queue)."""

    kind: str  # "queue" | "exchange"
    name: str
    messages: int = 0


async def inventory(conn: AbstractConnection, want: Sequence[Decl]) -> list[Present]:
    """What exists of *want*, with each queue's ready messages (its record queue included)."""
    found: list[Present] = []
    for d in want:
        if isinstance(d, QueueDecl):
            depth = await queue_depth(conn, d.name)
            if depth is not None:
                found.append(Present("queue", d.name, depth))
    for main in _main_queues(want).values():
        if await queue_depth(conn, state_queue(main)) is not None:
            found.append(Present("queue", state_queue(main)))
    exchanges = [d for d in want if isinstance(d, ExchangeDecl)]
    for d in sorted(exchanges, key=lambda d: not d.owner):  # a subscriber's first: it is bound
        if await _exists_exchange(conn, d.name):  # to the shared ones, which go only when unused
            found.append(Present("exchange", d.name))
    return found


async def remove(conn: AbstractConnection, present: Sequence[Present]) -> list[str]:
    """Delete *present* (queues first); returns the exchanges kept because something else still
    binds to them (another topology's queues sharing the vhost)."""
    kept: list[str] = []
    for p in sorted(present, key=lambda p: p.kind != "queue"):
        channel = await conn.channel(publisher_confirms=False)
        try:
            raw = await channel.get_underlay_channel()
            if p.kind == "queue":
                await raw.queue_delete(p.name)
            else:
                await raw.exchange_delete(p.name, if_unused=True)
        except aiormq.exceptions.ChannelPreconditionFailed:
            kept.append(p.name)
        finally:
            await close_quietly(channel)
    return kept
