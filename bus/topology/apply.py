"""Observe the broker and apply a plan. The only topology module that talks to RabbitMQ.

AMQP cannot read a queue's arguments back, so drift is detected the way the broker itself
checks it: an equivalent declaration on a throwaway channel succeeds (a no-op for an existing
object) and a different one fails with 406 PRECONDITION_FAILED, whose text names the argument.
The failure closes only that throwaway channel.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from bus.amqp import plumbing
from bus.amqp.plumbing import close_quietly, queue_counts
from bus.topology import migrate
from bus.topology.plan import (
    STATE_QUEUE_PREFIX,
    Action,
    BindingDecl,
    Decl,
    ExchangeBindingDecl,
    ExchangeDecl,
    Observed,
    QueueDecl,
    Role,
    Step,
    is_delay_object,
    is_history_object,
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
    """What exists of *want* (and of what the last apply recorded), without changing anything."""
    recorded: list[Decl] = []
    for main in _main_queues(want).values():
        recorded += await read_record(conn, main)
    for retired in retired_history(want):  # a log found by its name, once its exchange's
        if await queue_depth(conn, retired.name) is not None:  # `history:` is gone
            recorded.append(retired)
    exchanges: set[str] = set()
    queues: dict[str, int] = {}
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
            depth = await queue_depth(conn, d.name)
            if depth is not None:
                queues[d.name] = depth
                problem = await _probe(conn, d)
                if problem and d in want:
                    drift[d.key] = problem
    return Observed(frozenset(exchanges), queues, drift, tuple(recorded))


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
        await channel.declare_exchange(decl.name, aio_pika.ExchangeType(decl.type), durable=True)
    else:
        await channel.declare_queue(decl.name, durable=True, arguments=dict(decl.arguments))


async def apply(conn: AbstractConnection, steps: Sequence[Step], want: Sequence[Decl]) -> list[str]:
    """Carry out *steps* (creations, DLQ migrations and prunes), then record *want* as what we
    own; returns the DLQ migrations that could not be made now (one line each).

    Drifted objects are left alone: their steps carry the broker's complaint and the caller
    reports them. Bindings are idempotent, so every declared binding is asserted again.
    """
    channel = await conn.channel(publisher_confirms=False)
    try:
        for step in steps:
            d = step.decl
            if step.action is Action.CREATE and isinstance(d, ExchangeDecl | QueueDecl):
                log.debug("creating %s", d.key)
                await _declare(channel, d)
        drifted = {s.decl.key for s in steps if s.action is Action.DRIFT}
        raw = await channel.get_underlay_channel()
        for d in want:
            if isinstance(d, BindingDecl) and f"queue {d.queue}" not in drifted:
                await raw.queue_bind(d.queue, d.exchange, routing_key=d.routing_key)
            elif isinstance(d, ExchangeBindingDecl):
                await raw.exchange_bind(d.destination, d.source, routing_key=d.routing_key)
        for step in steps:
            if step.action is Action.DELETE:
                await _delete(channel, step.decl)
    finally:
        await close_quietly(channel)
    refused = await _migrate(conn, steps, _main_queues(want))
    owned = [
        d
        for d in want
        if d.key not in drifted and not is_delay_object(d) and not is_history_object(d)
    ]
    owned += [s.decl for s in steps if s.action in (Action.KEEP, Action.DRIFT)]
    mains = _main_queues(want)
    for owner, main in mains.items():
        mine = [
            d
            for d in owned
            if (isinstance(d, QueueDecl) and d.owner == owner)
            or (isinstance(d, BindingDecl) and d.queue == main)
        ]
        await write_record(conn, main, mine)
    return refused


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


def _main_queues(decls: Sequence[Decl]) -> dict[str, str]:
    """Subscriber name -> its main queue."""
    return {d.owner: d.name for d in decls if isinstance(d, QueueDecl) and d.role is Role.MAIN}


async def _delete(channel: AbstractChannel, decl: Decl) -> None:
    log.debug("deleting %s", decl.key)
    raw = await channel.get_underlay_channel()
    if isinstance(decl, QueueDecl) and decl.role is Role.HISTORY:
        await raw.queue_delete(decl.name)  # the planner decided: a log no longer asked for
    elif isinstance(decl, QueueDecl):
        # quorum queues refuse `if-empty`: check the depth right before deleting instead
        # (the planner already kept non-empty queues; this narrows the window further)
        ok = await raw.queue_declare(decl.name, passive=True)
        if ok.message_count:
            log.warning("kept %s: %d messages arrived since the plan", decl.name, ok.message_count)
            return
        await raw.queue_delete(decl.name)
    elif isinstance(decl, BindingDecl):
        await raw.queue_unbind(decl.queue, decl.exchange, routing_key=decl.routing_key)


# What `apply` created for a subscriber is recorded on the broker itself, as the one message of
# a durable classic queue `bus.state.<queue>`, so `plan` can show retry queues and bindings that
# left the file with AMQP alone. One record per subscriber: several topology files may share a
# vhost, and a prune only ever considers objects of subscribers the current file declares.


def state_queue(main_queue: str) -> str:
    return f"{STATE_QUEUE_PREFIX}{main_queue}"


async def read_record(conn: AbstractConnection, main_queue: str) -> list[Decl]:
    body = await plumbing.read_record(conn, state_queue(main_queue))
    return [] if body is None else _from_json(body)


async def write_record(conn: AbstractConnection, main_queue: str, owned: Sequence[Decl]) -> None:
    body = json.dumps([_to_json(d) for d in owned]).encode()
    await plumbing.write_record(conn, state_queue(main_queue), body)


def _to_json(d: Decl) -> dict[str, object]:
    if isinstance(d, ExchangeDecl):
        return {"kind": "exchange", "name": d.name, "type": d.type}
    if isinstance(d, QueueDecl):
        return {
            "kind": "queue",
            "name": d.name,
            "owner": d.owner,
            "role": str(d.role),
            "arguments": dict(d.arguments),
        }
    if isinstance(d, ExchangeBindingDecl):
        return {"kind": "exchange-binding", "destination": d.destination, "source": d.source,
                "key": d.routing_key}  # fmt: skip
    return {"kind": "binding", "queue": d.queue, "exchange": d.exchange, "key": d.routing_key}


def _from_json(body: bytes) -> list[Decl]:
    out: list[Decl] = []
    try:
        items = json.loads(body)
        for i in items:
            if i["kind"] == "exchange":
                out.append(ExchangeDecl(i["name"], i["type"]))
            elif i["kind"] == "queue":
                out.append(QueueDecl(i["name"], i["owner"], Role(i["role"]), i["arguments"]))
            elif i["kind"] == "binding":
                out.append(BindingDecl(i["queue"], i["exchange"], i["key"]))
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring an unreadable topology record")
        return []
    return out


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
    for d in want:
        if isinstance(d, ExchangeDecl) and await _exists_exchange(conn, d.name):
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
