"""The demo's own topology: the project's file renamed under a prefix with short retries
(pure), how many events each subscriber will see, and declaring or deleting it on the broker
the way `bus topology apply` and `teardown` do."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiormq
import yaml
from aio_pika.abc import AbstractConnection

from bus.amqp.plumbing import close_quietly
from bus.errors import BusError
from bus.topology import apply as applier
from bus.topology.diff import Action, diff
from bus.topology.model import Subscriber, Topology, from_dict
from bus.topology.model import load as load_topology
from bus.topology.plan import ExchangeDecl, QueueDecl, Role, desired, is_delay_object
from bus.topology.routing import matches

# What the demo's flows cause. One order: the API writes `order.placed`, fulfillment publishes
# `shipment.requested`, invoicing `invoice.rendered`, and email the delayed
# `order.review_requested` (its "how was your order?" mail, `follow_up` later). Some orders are
# cancelled at once (`order.cancelled`). A refund: the refunds saga asks payments, which answers
# `payment.refunded` or stays silent until the saga's timeout (`refund.expired`) compensates.
FLOW = (
    "order.placed", "order.cancelled", "shipment.requested", "invoice.rendered",
    "order.review_requested", "refund.requested", "payment.refund_requested", "payment.refunded",
    "refund.expired", "refund.completed", "refund.failed",
)  # fmt: skip

# The demo's stand-in payment provider: a subscriber of the demo only (`demo.payments`).
PAYMENTS = {
    "description": "The demo's stand-in payment provider: pays refunds back, all but a few.",
    "handlers": "demo.payments:router",
    "bindings": [{"exchange": "events", "keys": ["payment.refund_requested"]}],
    "publishes": ["payment.refunded"],
}


@dataclass(frozen=True)
class Volumes:
    """How many of each thing the demo does: *orders* in all, *cancelled* of them cancelled
    right behind their `order.placed`, *refunds* requested, *silent* of those never answered."""

    orders: int
    cancelled: int = 0
    refunds: int = 0
    silent: int = 0

    @classmethod
    def of(cls, orders: int) -> Volumes:
        """The demo's mix for *orders* orders (50: 5 cancelled, 6 refunds, 2 unanswered; 5: 1,
        2, 1). Refunds are asked half way, for orders the API accepted by then."""
        cancelled = max(1, orders // 10) if orders >= 2 else 0
        refunds = min(max(2, orders // 8), (orders - cancelled) // 2)
        return cls(orders, cancelled, refunds, max(1, refunds // 3) if refunds >= 2 else 0)

    def per_type(self) -> dict[str, int]:
        """How many events of each type the flows publish."""
        n, r, s = self.orders, self.refunds, self.silent
        return {
            "order.placed": n, "order.cancelled": self.cancelled, "shipment.requested": n,
            "invoice.rendered": n, "order.review_requested": n, "refund.requested": r,
            "payment.refund_requested": r, "payment.refunded": r - s,
            "refund.expired": r,  # every timeout fires; after a refund completed it is ignored
            "refund.completed": r - s, "refund.failed": s,
        }  # fmt: skip


# -- the demo topology (pure) ----------------------------------------------------------------


def demo_document(
    raw: Mapping[str, Any], prefix: str, delays: Sequence[str], *, leave_out: Sequence[str] = ()
) -> dict[str, Any]:
    """*raw* (a valid topology document) with its exchanges and queues renamed under *prefix*,
    every retry ladder replaced by *delays*, no schedules, only the subscribers of the demo's
    flows (less those in *leave_out*) and the stand-in payment provider."""
    doc = copy.deepcopy(dict(raw))
    subs = doc.setdefault("subscribers", {}) or {}
    if "payments" not in subs and "payment.refund_requested" in (doc.get("events") or {}):
        subs["payments"] = copy.deepcopy(PAYMENTS)
    doc["subscribers"] = subs
    renamed = {name: f"{prefix}.{name}" for name in doc.get("exchanges") or {}}
    doc["exchanges"] = {renamed[n]: spec for n, spec in (doc.get("exchanges") or {}).items()}
    for event in (doc.get("events") or {}).values():
        event["exchange"] = renamed[event["exchange"]]
    defaults = doc.setdefault("defaults", {}) or {}
    doc["defaults"] = defaults
    defaults["retry"] = {**(defaults.get("retry") or {}), "delays": list(delays)}
    for name, sub in (doc.get("subscribers") or {}).items():
        sub["queue"] = f"{prefix}.{sub.get('queue') or name}"
        for binding in sub.get("bindings") or []:
            binding["exchange"] = renamed[binding["exchange"]]
        if sub.get("retry"):
            sub["retry"]["delays"] = list(delays)
    doc.pop("schedules", None)
    topology = from_dict(doc, source="demo")
    flow = [t for t in FLOW if t in topology.events]
    # the demo runs its flows: a subscriber of other flows would sit idle
    doc["subscribers"] = {
        s.name: doc["subscribers"][s.name]
        for s in topology.subscribers()
        if s.name not in leave_out and any(_receives(topology, s, t) for t in flow)
    }
    return doc


def write_demo_topology(
    source: str, workdir: Path, prefix: str, delays: Sequence[str], *,
    leave_out: Sequence[str] = (), name: str = "topology.yaml",
) -> Path:  # fmt: skip
    """Validate *source*, derive the demo topology from it, validate that too, write it."""
    load_topology(source)  # every problem of the real file, with its paths
    raw = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    doc = demo_document(raw, prefix, delays, leave_out=leave_out)
    path = workdir / name
    from_dict(doc, source=str(path))
    header = f"# Derived by `bus demo` from {source}: names under `{prefix}.`, short retries.\n"
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, allow_unicode=True)
    path.write_text(header + text, encoding="utf-8")
    return path


def expected_handled(topology: Topology, volumes: Volumes) -> dict[str, int]:
    """How many events of the demo's flows each subscriber will receive."""
    counts = {t: n for t, n in volumes.per_type().items() if t in topology.events}
    return {
        s.name: sum(n for t, n in counts.items() if _receives(topology, s, t))
        for s in topology.subscribers()
    }


def _receives(topology: Topology, sub: Subscriber, event_type: str) -> bool:
    exchange = topology.events[event_type].exchange
    kind = str(topology.exchanges[exchange].type)
    return any(
        b.exchange == exchange
        and (
            kind == "fanout"
            or (b.key == event_type if kind == "direct" else matches(b.key, event_type))
        )
        for b in sub.bindings
    )


# -- broker objects ----------------------------------------------------------------------------


async def declare(conn: AbstractConnection, topology: Topology) -> None:
    """Apply the demo topology the way `bus topology apply` does (its records are kept per
    subscriber queue, so the real subscribers' records are never touched)."""
    want = desired(topology, applier.release(conn))
    steps = diff(want, await applier.observe(conn, want))
    drifted = [s.line() for s in steps if s.action is Action.DRIFT]
    if drifted:
        raise BusError(f"demo objects differ from {topology.source}: {drifted[0]}")
    await applier.apply(conn, steps, want)


async def delete(conn: AbstractConnection, topology: Topology) -> None:
    """Delete every demo queue (with what it holds), its apply record and the exchanges."""
    names: list[tuple[str, str]] = []
    for d in desired(topology):
        if is_delay_object(d) and not (isinstance(d, QueueDecl) and ".out." in d.name):
            continue  # the delay levels are the whole vhost's: only our own out queues go
        if isinstance(d, QueueDecl):
            names.append(("queue", d.name))
            if d.role in (Role.MAIN, Role.PARTITION):  # the apply record, a partition's report
                names.append(("queue", applier.state_queue(d.name)))
        elif isinstance(d, ExchangeDecl):
            names.append(("exchange", d.name))
    for kind, name in names:
        channel = await conn.channel(publisher_confirms=False)
        with contextlib.suppress(aiormq.exceptions.AMQPError):
            raw = await channel.get_underlay_channel()
            if kind == "queue":
                await raw.queue_delete(name)
            else:
                await raw.exchange_delete(name)
        await close_quietly(channel)
