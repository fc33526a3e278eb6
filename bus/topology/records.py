"""What `apply` created, recorded on the broker itself so that `plan --prune` can find it again.

AMQP can neither list queues nor read bindings back, so each subscriber's objects are written
down as the one message of a durable classic queue `bus.state.<its queue>`. A record also names
the subscribers applied together with it (`applied_with`, their queues) and the queues of the
topology that no subscriber owns (`shared`: history streams, delay hand-off queues): a
subscriber, a log or an event removed from the file is found through the records of the
subscribers that remain, and only those. Several topology files may share a vhost; a record
rewritten by another file no longer names ours, so its objects are never taken for ours.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aio_pika.abc import AbstractConnection

from bus.amqp import plumbing
from bus.topology.plan import (
    STATE_QUEUE_PREFIX,
    BindingDecl,
    Decl,
    ExchangeBindingDecl,
    ExchangeDecl,
    QueueDecl,
    Role,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One subscriber's record: its objects, its siblings' queues, the topology's shared queues."""

    objects: tuple[Decl, ...] = ()
    applied_with: frozenset[str] = frozenset()
    shared: tuple[QueueDecl, ...] = ()


def state_queue(main_queue: str) -> str:
    return f"{STATE_QUEUE_PREFIX}{main_queue}"


async def read(conn: AbstractConnection, main_queue: str) -> Record | None:
    """The record of the subscriber whose queue is *main_queue*; None when there is none."""
    body = await plumbing.read_record(conn, state_queue(main_queue))
    return None if body is None else decode(body)


async def write(
    conn: AbstractConnection,
    main_queue: str,
    owned: Sequence[Decl],
    applied_with: Iterable[str] = (),
    shared: Sequence[QueueDecl] = (),
) -> None:
    body = {
        "objects": [_to_json(d) for d in owned],
        "applied_with": sorted(set(applied_with)),
        "shared": [_to_json(d) for d in shared],
    }
    await plumbing.write_record(conn, state_queue(main_queue), json.dumps(body).encode())


def decode(body: bytes) -> Record:
    """A record as written by `write`, or by releases that wrote only the list of objects."""
    try:
        raw = json.loads(body)
        if isinstance(raw, list):
            return Record(tuple(_from_json(raw)))
        shared = [d for d in _from_json(raw.get("shared", [])) if isinstance(d, QueueDecl)]
        return Record(
            tuple(_from_json(raw["objects"])),
            frozenset(str(q) for q in raw.get("applied_with", [])),
            tuple(shared),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("ignoring an unreadable topology record")
        return Record()


def _to_json(d: Decl) -> dict[str, object]:
    if isinstance(d, ExchangeDecl):
        return {"kind": "exchange", "name": d.name, "type": d.type, "owner": d.owner,
                "arguments": dict(d.arguments)}  # fmt: skip
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
    return {"kind": "binding", "queue": d.queue, "exchange": d.exchange, "key": d.routing_key,
            "arguments": dict(d.arguments)}  # fmt: skip


def _from_json(items: list[dict[str, object]]) -> list[Decl]:
    out: list[Decl] = []
    for i in items:
        if i["kind"] == "exchange":
            args = i.get("arguments", {})
            if not isinstance(args, dict):
                raise TypeError("exchange arguments are not a mapping")
            out.append(ExchangeDecl(str(i["name"]), str(i["type"]), str(i.get("owner", "")), args))
        elif i["kind"] == "queue":
            args = i["arguments"]
            if not isinstance(args, dict):
                raise TypeError("queue arguments are not a mapping")
            out.append(QueueDecl(str(i["name"]), str(i["owner"]), Role(str(i["role"])), args))
        elif i["kind"] == "binding":
            args = i.get("arguments", {})
            if not isinstance(args, dict):
                raise TypeError("binding arguments are not a mapping")
            out.append(BindingDecl(str(i["queue"]), str(i["exchange"]), str(i["key"]), args))
        elif i["kind"] == "exchange-binding":
            out.append(ExchangeBindingDecl(str(i["destination"]), str(i["source"]), str(i["key"])))
    return out
