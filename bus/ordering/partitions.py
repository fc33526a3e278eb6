"""A delivery's ordering key and sequence number, and the headers of hold laps (the hash that
puts a key in its partition is part of the topology: `bus.topology.ordering.partition_of`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bus.envelope import H_KEY, header_text

HELD_BY = "bus-held-by"  # on an event sent round a hold lap: the id of the event its key waits for
LAP = "bus-lap"  # on an event sent round a hold lap: the tag of the gate that sent it
SEQ = "bus-seq"  # stamped by the partitioner: a key's later events have larger numbers
SENTINEL = "bus-lap-sentinel"  # a gate's marker sent round the hold queue after a takeover


def key_of(headers: Mapping[str, Any], message_id: str | None) -> str:
    """A delivery's ordering key: its `bus-key` header; without one (a foreign producer that
    did not set it), its own id, so it is ordered with nothing."""
    return header_text(headers.get(H_KEY)) or f"id:{message_id or ''}"


def seq_of(headers: Mapping[str, Any]) -> int:
    """A delivery's sequence number (`bus-seq`); 0 for one moved before the bus stamped them."""
    value = headers.get(SEQ)
    try:
        return int(value.decode() if isinstance(value, bytes) else value or 0)
    except (TypeError, ValueError):
        return 0


LAPS_FLAG = "bus:laps-out:"


def laps_flag(partition: str) -> str:
    """The store's pseudo-key that says *partition* may have events out on a hold lap."""
    return f"{LAPS_FLAG}{partition}"
