"""From a topology to the broker objects it declares.

Pure logic: `desired()` returns the exact objects of the contract table; `bus.topology.diff`
compares them with what the broker holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import bus.topology.delays as delays
from bus.durations import parse_ms
from bus.topology.model import (
    ExchangeType,
    History,
    QueueType,
    Subscriber,
    Topology,
    history_stream,
)
from bus.topology.ordering import (
    PARTITION_EXCHANGE_SUFFIX,
    UNROUTED_EXCHANGE_SUFFIX,
    partition_header,
)
from bus.topology.release import OLDEST, Release

STATE_QUEUE_PREFIX = "bus.state."  # + a subscriber's queue: what `apply` created for it


class Role(StrEnum):
    MAIN = "main"
    RETRY = "retry"
    DLQ = "dlq"
    DELAY = "delay"  # the shared delay levels (bus.topology.delays), owned by no subscriber
    HISTORY = "history"  # an exchange's event log, a stream queue owned by no subscriber
    PARTITION = "partition"  # an ordered subscriber's Q.p<i>
    HOLD = "hold"  # an ordered subscriber's Q.p<i>.hold


HISTORY_OWNER = "bus.history"  # the owner of every history stream: never a subscriber
HOLD_LAP_MS = 1000  # a held key's later events come back to their partition this often


@dataclass(frozen=True, slots=True)
class ExchangeDecl:
    name: str
    type: str
    # a subscriber's own exchange (an ordered subscriber's `Q.partitions`) names its owner; the
    # topology's exchanges, shared with producers, none
    owner: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=True)

    @property
    def key(self) -> str:
        return f"exchange {self.name}"

    def describe(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in sorted(self.arguments.items()))
        return f"exchange {self.name} ({self.type}, durable{args})"


@dataclass(frozen=True, slots=True)
class QueueDecl:
    name: str
    owner: str
    role: Role
    arguments: Mapping[str, Any] = field(hash=False, compare=True)

    @property
    def key(self) -> str:
        return f"queue {self.name}"

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.arguments.items()))
        return f"queue {self.name} (durable; {args})"


@dataclass(frozen=True, slots=True)
class BindingDecl:
    queue: str
    exchange: str
    routing_key: str
    # a headers exchange's match (a partition's `bus-partition-<N>`); none elsewhere
    arguments: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=True)

    @property
    def key(self) -> str:
        text = f"binding {self.exchange} -> {self.queue} [{self.routing_key}]"
        if self.arguments:
            text += " " + ", ".join(f"{k}={v}" for k, v in sorted(self.arguments.items()))
        return text

    def describe(self) -> str:
        return self.key


@dataclass(frozen=True, slots=True)
class ExchangeBindingDecl:
    """An exchange-to-exchange binding: *source* routes matching keys on to *destination*."""

    destination: str
    source: str
    routing_key: str

    @property
    def key(self) -> str:
        return f"binding {self.source} -> exchange {self.destination} [{self.routing_key}]"

    def describe(self) -> str:
        return self.key


Decl = ExchangeDecl | QueueDecl | BindingDecl | ExchangeBindingDecl


def _type_arguments(sub: Subscriber) -> dict[str, Any]:
    args: dict[str, Any] = {"x-queue-type": str(sub.queue_type)}
    if sub.queue_type is QueueType.QUORUM and sub.replicas:
        args["x-quorum-initial-group-size"] = sub.replicas
    return args


def main_queue_arguments(sub: Subscriber) -> dict[str, Any]:
    args: dict[str, Any] = {
        **_type_arguments(sub),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": sub.dlq,
    }
    if sub.queue_type is QueueType.QUORUM and sub.delivery_limit:
        args["x-delivery-limit"] = sub.delivery_limit
    if sub.ordered:  # one partitioner at a time, so events reach their partition in order
        args["x-single-active-consumer"] = True
    return args


def partition_queue_arguments(sub: Subscriber) -> dict[str, Any]:
    """`Q.p<i>`: like `Q` (rejects park in `Q.dlq`), one active consumer at a time."""
    return {**main_queue_arguments(sub), "x-single-active-consumer": True}


def hold_queue_arguments(sub: Subscriber, index: int) -> dict[str, Any]:
    """`Q.p<i>.hold`: a lap of `HOLD_LAP_MS`, then back to `Q.p<i>`, in the order they came."""
    args: dict[str, Any] = {
        **_type_arguments(sub),
        "x-message-ttl": HOLD_LAP_MS,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": sub.partition_queue(index),
    }
    if sub.queue_type is QueueType.QUORUM:
        args["x-dead-letter-strategy"] = "at-least-once"
        args["x-overflow"] = "reject-publish"
    return args


def retry_queue_arguments(sub: Subscriber, delay: str) -> dict[str, Any]:
    args: dict[str, Any] = {
        **_type_arguments(sub),
        "x-message-ttl": parse_ms(delay),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": sub.queue,
    }
    if sub.queue_type is QueueType.QUORUM:
        # at-least-once dead-lettering (3.10+): an expiring message is never lost in transit
        args["x-dead-letter-strategy"] = "at-least-once"
        args["x-overflow"] = "reject-publish"
    return args


def dlq_arguments(sub: Subscriber, release: Release = OLDEST) -> dict[str, Any]:
    """A DLQ never drops what it holds: no TTL, no length limit, and on a quorum queue no
    delivery limit (RabbitMQ 4 would otherwise drop a message that was read 20 times)."""
    args = _type_arguments(sub)
    unlimited = release.unlimited_delivery_limit
    if sub.queue_type is QueueType.QUORUM and unlimited is not None:
        args["x-delivery-limit"] = unlimited
    return args


def subscriber_objects(sub: Subscriber, release: Release = OLDEST) -> list[Decl]:
    """The queues and bindings one subscriber owns, on a broker of *release*."""
    decls: list[Decl] = [QueueDecl(sub.queue, sub.name, Role.MAIN, main_queue_arguments(sub))]
    decls += [
        QueueDecl(sub.retry_queue(d), sub.name, Role.RETRY, retry_queue_arguments(sub, d))
        for d in sub.delays
    ]
    decls.append(QueueDecl(sub.dlq, sub.name, Role.DLQ, dlq_arguments(sub, release)))
    for i in range(sub.partitions):
        decls += [
            QueueDecl(sub.partition_queue(i), sub.name, Role.PARTITION,
                      partition_queue_arguments(sub)),
            QueueDecl(sub.hold_queue(i), sub.name, Role.HOLD, hold_queue_arguments(sub, i)),
        ]  # fmt: skip
    exchange = sub.partition_exchange
    if exchange is None:
        decls += [BindingDecl(sub.queue, b.exchange, b.key) for b in sub.bindings]
        return decls
    # the broker routes each event to its partition by the header the bus's producers stamp;
    # what it cannot route (a foreign producer, a producer whose file says another number of
    # partitions) reaches Q through Q.unrouted, and the partitioner moves it by the same hash
    unrouted = sub.unrouted_exchange
    decls += [
        ExchangeDecl(exchange, "headers", sub.name, {"alternate-exchange": unrouted}),
        ExchangeDecl(unrouted, "fanout", sub.name),
        BindingDecl(sub.queue, unrouted, ""),
    ]
    header = partition_header(sub.partitions)
    decls += [BindingDecl(q, exchange, "", {"x-match": "all", header: str(i)})
              for i, q in enumerate(sub.partition_queues)]  # fmt: skip
    decls += [ExchangeBindingDecl(exchange, b.exchange, b.key) for b in sub.bindings]
    return decls


def _delay_queue_arguments(ttl_ms: int, exchange: str, routing_key: str | None) -> dict[str, Any]:
    args: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-message-ttl": ttl_ms,
        "x-dead-letter-exchange": exchange,
        # at-least-once dead-lettering (3.10+): a delayed event is never lost between hops
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    if routing_key is not None:
        args["x-dead-letter-routing-key"] = routing_key
    return args


def delay_objects(topology: Topology) -> list[Decl]:
    """The delay levels (shared by every topology of the vhost) and, per declared event type,
    the queue that hands a delayed event to its exchange (`bus.topology.delays`)."""
    decls: list[Decl] = [ExchangeDecl(delays.DELIVER, "topic")]
    for level in range(delays.LEVELS):
        here = delays.level_exchange(level)
        below = delays.level_exchange(level - 1) if level else delays.DELIVER
        queue = delays.level_queue(level)
        args = _delay_queue_arguments(2**level * 1000, below, None)
        decls += [
            ExchangeDecl(here, "topic"),
            QueueDecl(queue, delays.PREFIX, Role.DELAY, args),
            BindingDecl(queue, here, delays.level_key(level, "1")),
            ExchangeBindingDecl(below, here, delays.level_key(level, "0")),
        ]
    for event_type, spec in topology.events.items():
        queue = delays.out_queue(spec.exchange, event_type)
        args = _delay_queue_arguments(0, spec.exchange, event_type)
        decls += [
            QueueDecl(queue, delays.PREFIX, Role.DELAY, args),
            BindingDecl(queue, delays.DELIVER, delays.deliver_key(spec.exchange, event_type)),
        ]
    return decls


def stream_max_age(duration: str) -> str:
    """A duration as a stream's `x-max-age` (units Y M D h m s): "7d" -> "7D", "250ms" -> "1s"."""
    seconds = max(1, -(-parse_ms(duration) // 1000))
    for unit, size in (("D", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def history_arguments(history: History) -> dict[str, Any]:
    args: dict[str, Any] = {"x-queue-type": "stream"}
    if history.max_age:
        args["x-max-age"] = stream_max_age(history.max_age)
    if history.max_bytes:
        args["x-max-length-bytes"] = history.max_bytes
    return args


def history_keys(topology: Topology, exchange: str) -> list[str]:
    """Binding keys that route every event of *exchange* to its log exactly once."""
    kind = topology.exchanges[exchange].type
    if kind is ExchangeType.TOPIC:
        return ["#"]
    if kind is ExchangeType.FANOUT:
        return [""]
    return [t for t, e in topology.events.items() if e.exchange == exchange]


def history_objects(topology: Topology) -> list[Decl]:
    """Per exchange keeping history: its stream and the bindings that feed it."""
    decls: list[Decl] = []
    for h in topology.histories():
        decls.append(QueueDecl(h.stream, HISTORY_OWNER, Role.HISTORY, history_arguments(h)))
        decls += [BindingDecl(h.stream, h.exchange, k) for k in history_keys(topology, h.exchange)]
    return decls


def is_history_object(d: Decl) -> bool:
    """An exchange's log or a binding feeding it: found by name, never in a subscriber's record."""
    if isinstance(d, QueueDecl):
        return d.role is Role.HISTORY
    return isinstance(d, BindingDecl) and d.queue == history_stream(d.exchange)


def retired_history(want: Iterable[Decl]) -> list[QueueDecl]:
    """The logs an exchange of *want* would have if it no longer keeps history: `observe`
    looks for them by name, so that `apply --prune` can remove them."""
    wanted = {d.name for d in want if isinstance(d, QueueDecl)}
    return [
        QueueDecl(history_stream(d.name), HISTORY_OWNER, Role.HISTORY, {})
        for d in want
        if isinstance(d, ExchangeDecl)
        and not is_delay_object(d)
        and history_stream(d.name) not in wanted
    ]


def desired(topology: Topology, release: Release = OLDEST) -> list[Decl]:
    """Every object the topology declares on a broker of *release*: exchanges, their history,
    each subscriber's, then the delays'."""
    decls: list[Decl] = [ExchangeDecl(n, str(e.type)) for n, e in topology.exchanges.items()]
    decls += history_objects(topology)
    for sub in topology.subscribers():
        decls += subscriber_objects(sub, release)
    return decls + delay_objects(topology)


def is_delay_object(d: Decl) -> bool:
    """Part of the shared delay machinery: never recorded for a subscriber, never pruned."""
    if isinstance(d, QueueDecl):
        return d.role is Role.DELAY
    if isinstance(d, BindingDecl):
        return d.queue.startswith(f"{delays.PREFIX}.")
    if isinstance(d, ExchangeBindingDecl):  # a level passing keys on to the next
        return d.source.startswith(f"{delays.PREFIX}.")
    return d.name.startswith(f"{delays.PREFIX}.")


def is_delay_hand_off(d: Decl) -> bool:
    """A `bus.delay.out.<exchange>.<type>` queue: one topology's event, not the shared levels,
    so `teardown` removes it with the topology."""
    return isinstance(d, QueueDecl) and d.name.startswith(f"{delays.PREFIX}.out.")


def owned_by(d: Decl, owner: str, main: str) -> bool:
    """Is *d* one of subscriber *owner*'s objects (its main queue *main*), to be recorded?"""
    if isinstance(d, QueueDecl | ExchangeDecl):
        return d.owner == owner
    own = (f"{main}{PARTITION_EXCHANGE_SUFFIX}", f"{main}{UNROUTED_EXCHANGE_SUFFIX}")
    if isinstance(d, BindingDecl):
        return d.queue == main or d.exchange in own
    return d.destination in own
