"""Build, apply and tear down per-test topologies on the real broker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq

from bus.amqp.connection import connect_plain
from bus.consume.router import Router
from bus.consume.runtime import Runtime
from bus.stores import MemoryStore
from bus.topology import apply as applier
from bus.topology.delays import PREFIX
from bus.topology.diff import diff
from bus.topology.model import Topology, from_dict
from bus.topology.plan import ExchangeDecl, QueueDecl, Role, desired, is_delay_object

OUT = f"{PREFIX}.out."  # a topology's own delay queues: one per event type

ORDER_SCHEMA = {
    "type": "object",
    "required": ["order_id"],
    "properties": {"order_id": {"type": "string"}},
}


def topology_doc(
    prefix: str,
    subscribers: dict[str, dict[str, Any]],
    *,
    delays: list[str] | None = None,
    queue_type: str = "quorum",
    events: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A topology whose exchange and queues all start with *prefix*."""
    exchange = f"{prefix}.events"
    subs = {}
    for name, spec in subscribers.items():
        spec = dict(spec)
        spec.setdefault("handlers", "tests.integration.helpers:EMPTY")
        spec.setdefault("queue", f"{prefix}.{name}")
        spec["bindings"] = [{"exchange": exchange, "keys": spec.pop("keys", ["#"])}]
        subs[name] = spec
    return {
        "version": 1,
        "defaults": {
            "queue_type": queue_type,
            "prefetch": 16,
            "retry": {"delays": delays if delays is not None else ["200ms", "400ms", "800ms"]},
        },
        "exchanges": {exchange: {"type": "topic"}},
        "events": events
        or {
            "order.placed": {"exchange": exchange, "schema": ORDER_SCHEMA},
            "order.shipped": {"exchange": exchange},
            "shipment.requested": {"exchange": exchange},
            "report.daily_requested": {"exchange": exchange},
        },
        "subscribers": subs,
    }


def make_topology(prefix: str, subscribers: dict[str, dict[str, Any]], **kw: Any) -> Topology:
    return from_dict(topology_doc(prefix, subscribers, **kw), source=f"test:{prefix}")


EMPTY = Router()


async def apply_topology(url: str, topology: Topology) -> None:
    conn = await connect_plain(url)
    try:
        want = desired(topology, applier.release(conn))
        await applier.apply(conn, diff(want, await applier.observe(conn, want)), want)
    finally:
        await conn.close()


async def delete_topology(url: str, topology: Topology) -> None:
    conn = await connect_plain(url)
    try:
        for d in desired(topology):
            if is_delay_object(d) and not (isinstance(d, QueueDecl) and d.name.startswith(OUT)):
                continue  # the delay levels are shared by every topology of the vhost
            channel = await conn.channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                raw = await channel.get_underlay_channel()
                if isinstance(d, QueueDecl):
                    await raw.queue_delete(d.name)
                    if d.role in (Role.MAIN, Role.PARTITION):  # its record; a partition's report
                        await raw.queue_delete(applier.state_queue(d.name))
                elif isinstance(d, ExchangeDecl):
                    await raw.exchange_delete(d.name)
            if not channel.is_closed:
                await channel.close()
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def applied(url: str, topology: Topology) -> AsyncIterator[Topology]:
    await apply_topology(url, topology)
    try:
        yield topology
    finally:
        await delete_topology(url, topology)


@contextlib.asynccontextmanager
async def running(
    url: str, topology: Topology, name: str, router: Router, store: Any = None
) -> AsyncIterator[Runtime]:
    rt = Runtime(topology, name, router, url=url, store=store or MemoryStore())
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop(5)


async def queue_depth(url: str, queue: str) -> int:
    conn = await connect_plain(url)
    try:
        depth = await applier.queue_depth(conn, queue)
        return depth or 0
    finally:
        await conn.close()


async def get_all(
    url: str, queue: str, timeout: float = 5.0
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take (and ack) every message currently in *queue*."""
    conn = await connect_plain(url)
    out = []
    try:
        channel = await conn.channel()
        q = await channel.declare_queue(queue, passive=True)
        while True:
            m = await q.get(no_ack=True, fail=False, timeout=timeout)
            if m is None:
                break
            out.append(m)
    finally:
        await conn.close()
    return out
