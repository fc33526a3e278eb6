"""What `bus demo` sees, as plain data: a snapshot of every service and flow, and the outcome.
The command line renders them (`bus/cli/demo.py`); `demo.flow` takes them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from demo.stubs import WarehouseStats


@dataclass(frozen=True)
class SubscriberView:
    name: str
    queue: str
    expected: int
    handled: int = 0  # outcome ok
    retried: int = 0  # handed to a retry queue
    parked: int = 0  # outcome dead
    duplicates: int = 0
    waiting: int = 0  # ready in the main queue now
    retrying: int = 0  # in its retry queues now

    @property
    def settled(self) -> bool:
        return self.handled + self.parked >= self.expected


@dataclass(frozen=True)
class OrderingView:
    """Ordered fulfillment: orders cancelled right behind their `order.placed`, from what
    fulfillment recorded (its ledger) and its `fulfillment_overtaken_total` metric."""

    cancelled: int = 0  # orders the till placed and cancelled at once
    seen: int = 0  # of their cancellations, handled by fulfillment
    in_order: int = 0  # handled after their order.placed
    overtaken: int = 0  # events fulfillment handled before an earlier one of their order
    metric: int = 0  # fulfillment_overtaken_total
    held: int = 0  # cancellations that waited while their order.placed was retried

    @property
    def settled(self) -> bool:
        return self.seen >= self.cancelled


@dataclass(frozen=True)
class SearchView:
    """The `search` subscriber, added half way with `backfill`: its index of orders."""

    added: bool = False
    added_after: int = 0  # orders accepted when `bus topology apply` added it
    backfilled: int = 0  # events apply copied into its queue from history
    indexed: int = 0  # orders in its index
    from_history: int = 0  # of them, first indexed from a copy out of history
    cancelled: int = 0  # of them, marked cancelled


@dataclass(frozen=True)
class RefundsView:
    """The refund sagas, from the refunds subscriber's store."""

    requested: int = 0
    silent: int = 0  # of them, never answered by the payment provider
    completed: int = 0  # paid back (payment.refunded -> refund.completed)
    failed: int = 0  # timed out (refund.expired -> refund.failed: the compensation)
    running: int = 0

    @property
    def settled(self) -> bool:
        return self.completed + self.failed >= self.requested


@dataclass(frozen=True)
class Snapshot:
    elapsed: float
    orders: int
    published: int  # orders accepted by the API, and placed at the till
    subscribers: tuple[SubscriberView, ...]
    mails: int
    warehouse: WarehouseStats
    outbox_pending: int = 0  # accepted orders whose event the relay has not published yet
    outbox_lag: float = 0.0  # age of the oldest of them, seconds
    follow_ups: int = 0  # delayed "how was your order?" mails delivered
    invoices: tuple[Path, ...] = ()  # PDF invoices written by invoicing
    till: int = 0  # of the published, placed at the till (not through the API's outbox)
    ordering: OrderingView = OrderingView()
    search: SearchView | None = None  # None: the topology has no search subscriber
    refunds: RefundsView = RefundsView()

    @property
    def relayed(self) -> int:
        return self.published - self.till - self.outbox_pending

    @property
    def done(self) -> bool:
        return (
            self.published >= self.orders
            and all(s.settled for s in self.subscribers)
            and self.follow_ups >= self.orders
            and len(self.invoices) >= self.orders
            and self.ordering.settled
            and self.refunds.settled
            and (self.search is None or (self.search.added and self.search.indexed >= self.orders))
        )


@dataclass
class Outcome:
    snapshot: Snapshot
    problems: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    api: dict[str, float] = field(default_factory=dict)  # response times, ms
    max_outbox_lag: float = 0.0
    relay_kills: int = 0
    follow_up: str = "3s"  # the delay of the follow-up mails
    refund_timeout: str = "4s"  # the refund saga's timeout (3d in production)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        s = self.snapshot
        return {
            "ok": self.ok,
            "orders": s.orders,
            "published": s.published,
            "subscribers": {
                v.name: {
                    "expected": v.expected,
                    "handled": v.handled,
                    "retried": v.retried,
                    "parked": v.parked,
                    "duplicates": v.duplicates,
                }
                for v in s.subscribers
            },
            "mails": s.mails,
            "follow_ups": s.follow_ups,
            "invoices": len(s.invoices),
            "invoice_sample": str(s.invoices[0]) if s.invoices else None,
            "warehouse": asdict(s.warehouse),
            "api": self.api,
            "outbox": {
                "relayed": s.relayed,
                "pending": s.outbox_pending,
                "max_lag_seconds": round(self.max_outbox_lag, 3),
                "relay_kills": self.relay_kills,
            },
            "ordering": asdict(s.ordering),
            "search": asdict(s.search) if s.search is not None else None,
            "refunds": {**asdict(s.refunds), "timeout": self.refund_timeout},
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "problems": self.problems,
        }


def problems_of(snap: Snapshot) -> list[str]:
    """What went wrong in the flows, from what the services recorded."""
    problems = [
        f"{v.name} parked {v.parked} in {v.queue}.dlq" for v in snap.subscribers if v.parked
    ]
    if len(snap.invoices) < snap.orders:
        problems.append(f"{len(snap.invoices)} invoices for {snap.orders} orders")
    if snap.follow_ups < snap.orders:
        problems.append(f"{snap.follow_ups} follow-up mails for {snap.orders} orders")
    o = snap.ordering
    if o.overtaken or o.metric or o.in_order < o.cancelled:
        problems.append(
            f"ordering: {o.in_order} of {o.cancelled} cancellations after their order, "
            f"{max(o.overtaken, o.metric)} events overtook an earlier one of their order"
        )
    s = snap.search
    if s is not None and s.indexed < snap.orders:
        problems.append(f"search indexed {s.indexed} of {snap.orders} orders")
    r = snap.refunds
    if (r.completed, r.failed) != (r.requested - r.silent, r.silent):
        problems.append(
            f"refunds: {r.completed} completed and {r.failed} failed of {r.requested} "
            f"(expected {r.requested - r.silent} and {r.silent})"
        )
    return problems


def behind(snap: Snapshot) -> str:
    parts = [
        f"{v.name} handled {v.handled} of {v.expected} ({v.waiting} waiting, "
        f"{v.retrying} in retry, the rest delivered but not acked)"
        for v in snap.subscribers
        if not v.settled
    ]
    if snap.outbox_pending:
        parts.insert(0, f"{snap.outbox_pending} events still in the outbox")
    if snap.published < snap.orders:
        parts.insert(0, f"the orders accepted: {snap.published} of {snap.orders}")
    if snap.search is not None and not snap.search.added:
        parts.append("search was not added")
    if not snap.refunds.settled:
        r = snap.refunds
        parts.append(f"refunds: {r.completed + r.failed} of {r.requested} finished")
    return "; ".join(parts) or "nothing missing"
