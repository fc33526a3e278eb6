"""The topology checks of ordered subscribers: `partitions` and `partitioner` only with
`ordered`, an ordered subscriber receives keyed types only, and the partition and hold queues
it owns.

Cross-reference checks on the unvalidated document (`bus.topology.model` calls them, one line
per problem, beside its other checks).
"""

from __future__ import annotations

import zlib
from enum import StrEnum
from typing import Any, Protocol

from bus.topology.routing import matches

DEFAULT_PARTITIONS = 4
# `partitioner: exchange`: Q.partitions, a headers exchange, routes an event to its partition by
# the `bus-partition-<N>` header the bus's producers stamp; what it cannot route (no such
# header: a foreign producer, or one whose file says another N) goes to Q.unrouted, a fanout
# exchange bound to Q, whence the partitioner moves it
PARTITION_EXCHANGE_SUFFIX = ".partitions"
UNROUTED_EXCHANGE_SUFFIX = ".unrouted"


class Partitioner(StrEnum):
    """How an ordered subscriber's events reach its partitions."""

    BUS = "bus"  # the bus moves each from the subscriber's queue
    EXCHANGE = "exchange"  # the broker routes it there, by a header the producer stamps


def partition_of(key: str, partitions: int) -> int:
    """The partition of *key* among *partitions*: CRC-32 of its UTF-8, stable across processes
    and versions (unlike `hash()`, which is salted per process)."""
    return zlib.crc32(key.encode()) % partitions


def partition_header(partitions: int) -> str:
    """The header that names an event's partition among *partitions*: `bus-partition-4`."""
    return f"bus-partition-{partitions}"


class RawDocument(Protocol):
    """What the checks read of the document (`bus.topology.checks._Raw`)."""

    events: dict[str, Any]

    def exchange_type(self, name: str) -> str: ...
    def event_exchange(self, etype: str) -> Any: ...


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def partition_queues(queue: str, sub: dict[str, Any]) -> list[str]:
    """The partition and hold queues an ordered subscriber owns (none for another)."""
    if sub.get("ordered") is not True:
        return []
    n = sub.get("partitions", DEFAULT_PARTITIONS)
    n = n if isinstance(n, int) and 0 < n <= 1024 else 0
    return [q for i in range(n) for q in (f"{queue}.p{i}", f"{queue}.p{i}.hold")]


def check_ordered(doc: RawDocument, where: str, sub: dict[str, Any]) -> list[str]:
    """An ordered subscriber receives only keyed types; `partitions` needs `ordered`."""
    if sub.get("ordered") is not True:
        return [f"{where}.{k}: only an ordered subscriber has {what} (add `ordered: true`)"
                for k, what in (("partitions", "partitions"), ("partitioner", "a partitioner"))
                if k in sub]  # fmt: skip
    received: list[str] = []
    bindings = sub.get("bindings", [])
    for b in bindings if isinstance(bindings, list) else []:
        binding = _mapping(b)
        exchange = binding.get("exchange")
        keys = _strings(binding.get("keys", [])) or ["#"]
        kind = doc.exchange_type(exchange) if isinstance(exchange, str) else "topic"
        for etype in doc.events:
            if doc.event_exchange(etype) != exchange or etype in received:
                continue
            if kind == "fanout" or any(
                matches(k, etype) if kind == "topic" else k == etype for k in keys
            ):
                received.append(etype)
    return [
        f"{where}.ordered: it receives {etype!r}, which declares no `key` "
        f"(add `key: <field>` under events.{etype})"
        for etype in received
        if not isinstance(_mapping(doc.events.get(etype)).get("key"), str)
    ]
