"""From observed broker state to a list of changes.

Pure logic: `diff()` compares the objects a topology declares (`bus.topology.plan.desired()`)
with what `bus.topology.apply.observe()` saw and returns the steps `apply` would take.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from bus.topology.plan import (
    BindingDecl,
    Decl,
    ExchangeBindingDecl,
    ExchangeDecl,
    QueueDecl,
    Role,
    is_delay_object,
    is_history_object,
)


def _step(d: Decl, seen: Observed, recorded_bindings: set[BindingDecl]) -> Step:
    """What becomes of one wanted object."""
    if d.key in seen.drift:
        if _migratable(d, seen.drift[d.key]):
            assert isinstance(d, QueueDecl)
            return Step(Action.MIGRATE, d, _migration(d, seen.queues.get(d.name, 0)))
        return Step(Action.DRIFT, d, seen.drift[d.key])
    if isinstance(d, ExchangeDecl):
        known = d.name in seen.exchanges
    elif isinstance(d, QueueDecl):
        known = d.name in seen.queues
    elif isinstance(d, ExchangeBindingDecl):  # asserted on every apply: idempotent
        known = d.source in seen.exchanges and d.destination in seen.exchanges
    elif is_delay_object(d) or is_history_object(d):  # not in any subscriber's record
        known = d.queue in seen.queues
    else:
        known = d in recorded_bindings and d.queue in seen.queues
    return Step(Action.UNCHANGED if known else Action.CREATE, d)


def _migratable(d: Decl, complaint: str) -> bool:
    """A DLQ whose only known difference is its delivery limit: `apply` re-declares it and
    keeps its messages (bus.topology.migrate)."""
    return isinstance(d, QueueDecl) and d.role is Role.DLQ and "'x-delivery-limit'" in complaint


def _migration(d: QueueDecl, depth: int) -> str:
    limit = d.arguments.get("x-delivery-limit")
    change = "without a delivery limit" if limit is None else f"with x-delivery-limit={limit}"
    return (
        f"re-declared {change}, its {depth} messages moved aside and back (stop the "
        "subscriber first); reading a DLQ under a delivery limit drops its messages"
    )


class Action(StrEnum):
    CREATE = "create"
    MIGRATE = "migrate"  # re-declared with new arguments, its messages kept
    UNCHANGED = "unchanged"
    DRIFT = "drift"
    DELETE = "delete"
    KEEP = "keep"  # no longer declared, but kept: --prune not given
    REFUSE = "refuse"  # no longer declared, but `apply --prune` will not delete it: not empty
    # (without --drop-messages) or still consumed


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    decl: Decl
    detail: str = ""
    drop: bool = False  # a DELETE of a queue that held messages: `--drop-messages` said so

    def line(self) -> str:
        sign = {
            "create": "+",
            "migrate": "~",
            "unchanged": "=",
            "drift": "!",
            "delete": "-",
            "keep": "?",
            "refuse": "x",
        }
        text = f"{sign[self.action]} {self.action:<9} {self.decl.describe()}"
        return f"{text}: {self.detail}" if self.detail else text


@dataclass(frozen=True)
class Observed:
    """What the broker holds, as far as AMQP can tell.

    `queues` maps existing queue names to their ready-message count; `drift` maps object keys to
    the broker's own complaint; `recorded` is what the previous `apply` wrote down (AMQP cannot
    list bindings or queues, so the applier keeps a record of what it owns), the objects of
    subscribers removed from the file included; `removed` names those subscribers' queues;
    `consumers` maps existing queue names to their consumer count.
    """

    exchanges: frozenset[str]
    queues: Mapping[str, int]
    drift: Mapping[str, str]
    recorded: tuple[Decl, ...] = ()
    consumers: Mapping[str, int] = field(default_factory=dict)
    removed: tuple[str, ...] = ()


def diff(
    want: Iterable[Decl], seen: Observed, *, prune: bool = False, drop_messages: bool = False
) -> list[Step]:
    """Steps that take the broker from *seen* to *want*. What is no longer declared is deleted
    only with *prune*, and a queue only when nothing consumes it and it is empty (or
    *drop_messages*); a subscriber removed from the file loses nothing while any of its queues
    is consumed."""
    want = list(want)
    recorded_bindings = {d for d in seen.recorded if isinstance(d, BindingDecl)}
    steps = [_step(d, seen, recorded_bindings) for d in want]
    wanted = {d.key for d in want}
    running = _running_owners(seen, wanted)
    routes = _PartitionRoutes(want, seen)
    queue_steps: dict[str, Step] = {}
    for old in seen.recorded:
        if old.key in wanted:
            continue
        if routes.covers(old) and not isinstance(old, QueueDecl):
            step = routes.step(old, prune, running)
            if step is not None:
                steps.append(step)
            continue
        if isinstance(old, ExchangeDecl | ExchangeBindingDecl):
            continue  # exchanges are shared with producers: never pruned
        if isinstance(old, QueueDecl):
            if old.name in seen.queues and old.name not in queue_steps:
                queue_steps[old.name] = _leftover(old, seen, prune, drop_messages, running)
                steps.append(queue_steps[old.name])
        elif old.queue in seen.queues:
            held = queue_steps.get(old.queue)
            if not prune:
                steps.append(Step(Action.KEEP, old, "no longer declared"))
            elif held is not None and held.action is Action.REFUSE and "consumed" in held.detail:
                steps.append(Step(Action.KEEP, old, f"{old.queue} is still consumed"))
            else:
                steps.append(Step(Action.DELETE, old))
    return steps


class _PartitionRoutes:
    """What leads an ordered subscriber's events to its partitions, and what must go when that
    changes: a leftover route would hand events to a partition the keys no longer map to, or
    twice (through the subscriber's queue and through its partition exchange). The exchanges a
    subscriber owns (`Q.partitions`, `Q.unrouted`) are its own, unlike the topology's.

    Removed at once (`apply` checked first that the subscriber holds no events, as for a
    change of `partitions`): the partition exchange of a subscriber now without one, the
    bindings into the queue of one that now has one, the partition bindings beyond its count.
    A subscriber removed from the file loses its exchange with `--prune`, as its queues."""

    def __init__(self, want: list[Decl], seen: Observed) -> None:
        self.seen = seen
        everything = [*want, *seen.recorded]
        self.exchanges = {
            d.name: d.owner for d in everything if isinstance(d, ExchangeDecl) and d.owner
        }
        self.wanted_exchanges = {d.name for d in want if isinstance(d, ExchangeDecl)}
        mains = {d.owner: d.name for d in want if isinstance(d, QueueDecl) and d.role is Role.MAIN}
        self.in_file = set(mains)
        # main queues whose events now go through a partition exchange
        self.rerouted = {mains[o] for n, o in self.exchanges.items()
                         if n in self.wanted_exchanges and o in mains}  # fmt: skip

    def covers(self, d: Decl) -> bool:
        if isinstance(d, ExchangeDecl):
            return d.name in self.exchanges
        if isinstance(d, ExchangeBindingDecl):
            return d.destination in self.exchanges
        if isinstance(d, BindingDecl):
            return d.exchange in self.exchanges or d.queue in self.rerouted
        return False

    def step(
        self, d: ExchangeDecl | BindingDecl | ExchangeBindingDecl, prune: bool, running: set[str]
    ) -> Step | None:
        seen = self.seen
        if isinstance(d, ExchangeDecl):
            if d.name not in seen.exchanges:
                return None
            if d.owner in self.in_file or (prune and d.owner not in running):
                return Step(Action.DELETE, d, "its partitions are no longer fed through it")
            return Step(Action.KEEP, d, "no longer declared")
        source = d.source if isinstance(d, ExchangeBindingDecl) else d.exchange
        target = d.destination if isinstance(d, ExchangeBindingDecl) else d.queue
        if source not in seen.exchanges or (target not in seen.exchanges
                                            and target not in seen.queues):  # fmt: skip
            return None
        exchange = d.destination if isinstance(d, ExchangeBindingDecl) else d.exchange
        if exchange in self.exchanges and exchange not in self.wanted_exchanges:
            return None  # goes with its exchange
        if isinstance(d, BindingDecl) and d.exchange in self.exchanges:  # another N, fewer
            return Step(Action.DELETE, d, "a partition binding the file no longer declares")
        if isinstance(d, BindingDecl):  # into the queue: the partition exchange takes over
            return Step(Action.DELETE, d, "its events now reach the partitions directly")
        if prune:
            return Step(Action.DELETE, d)
        return Step(Action.KEEP, d, "no longer declared")


def _running_owners(seen: Observed, wanted: set[str]) -> set[str]:
    """Owners of a queue no longer declared that something still consumes: a subscriber
    removed from the file but still running keeps all its queues until it is stopped."""
    return {
        d.owner
        for d in seen.recorded
        if isinstance(d, QueueDecl) and d.key not in wanted and seen.consumers.get(d.name)
    }


def _leftover(
    old: QueueDecl, seen: Observed, prune: bool, drop_messages: bool, running: set[str]
) -> Step:
    """What becomes of an existing queue the topology no longer declares."""
    depth, consumers = seen.queues[old.name], seen.consumers.get(old.name, 0)
    counts = f"{depth} messages" + (f", {consumers} consumers" if consumers else "")
    if not prune:
        return Step(Action.KEEP, old, f"no longer declared ({counts}); `apply --prune` removes it")
    if consumers or old.owner in running:
        why = "still consumed" if consumers else f"still consumed ({old.owner} is running)"
        return Step(Action.REFUSE, old, f"{counts}: {why}; stop the subscriber first")
    if depth and not drop_messages:
        return Step(
            Action.REFUSE, old, f"holds {depth} messages: drain them, or add --drop-messages"
        )
    detail = f"{depth} messages dropped" if depth else "empty"
    return Step(Action.DELETE, old, detail, drop=bool(depth))
