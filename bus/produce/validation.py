"""The checks every producer runs before an event leaves it: declared type, JSON Schema.

`Publisher.publish`, `Outbox.add` and the relay share them, so an event refused by one is
refused by all, with the same error.
"""

from __future__ import annotations

from typing import Any

import jsonschema

from bus.errors import InvalidEvent, UnknownEventType
from bus.topology.model import Topology


class EventChecker:
    """Raises UnknownEventType or InvalidEvent; compiles each event's schema once."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._validators: dict[str, jsonschema.protocols.Validator | None] = {}

    def check(self, event_type: str, data: Any) -> None:
        if event_type not in self.topology.events:
            raise UnknownEventType(
                f"event type {event_type!r} is not declared in {self.topology.source} "
                "(add it under `events:`)"
            )
        validator = self._validator(event_type)
        if validator is not None:
            error = jsonschema.exceptions.best_match(validator.iter_errors(data))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                raise InvalidEvent(
                    f"{event_type} data fails its schema at {where}: {error.message}"
                )

    def _validator(self, event_type: str) -> jsonschema.protocols.Validator | None:
        if event_type not in self._validators:
            schema = self.topology.events[event_type].json_schema
            self._validators[event_type] = (
                jsonschema.Draft202012Validator(schema) if schema is not None else None
            )
        return self._validators[event_type]
