"""The checks every producer runs before an event leaves it: declared type, JSON Schema, and
the ordering key of a keyed type.

`Publisher.publish`, `Outbox.add` and the relay share them, so an event refused by one is
refused by all, with the same error.
"""

from __future__ import annotations

from typing import Any

from bus.envelope import key_at
from bus.errors import InvalidEvent, UnknownEventType
from bus.topology.model import Topology
from bus.topology.schemas import Schemas


class EventChecker:
    """Raises UnknownEventType or InvalidEvent; each event's schema is compiled once."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.schemas = Schemas(topology)

    def check(self, event_type: str, data: Any) -> None:
        if event_type not in self.topology.events:
            raise UnknownEventType(
                f"event type {event_type!r} is not declared in {self.topology.source} "
                "(add it under `events:`)"
            )
        problem = self.schemas.problem(event_type, data)
        if problem is not None:
            raise InvalidEvent(f"{event_type} data fails its schema {problem}")
        self.key(event_type, data)

    def key(self, event_type: str, data: Any) -> str | None:
        """The `bus-key` of an event of a keyed type (None for an unkeyed one); InvalidEvent
        when the field its type names as `key` is missing."""
        path = self.topology.events[event_type].key
        if path is None:
            return None
        key = key_at(data, path)
        if key is None:
            raise InvalidEvent(
                f"{event_type} is ordered by `{path}`, but its data has no such field "
                "(or it is null, a list or an object)"
            )
        return key
