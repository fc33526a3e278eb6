"""The events' JSON Schemas, compiled once per event type: the one check that the publisher, the
outbox and the subscriber's dispatch step all run on an event's data."""

from __future__ import annotations

from typing import Any

import jsonschema

from bus.topology.model import Topology


class Schemas:
    """`problem(type, data)`: None when *data* passes the schema of *type* (or it has none),
    else where and why it fails, in one line."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._validators: dict[str, jsonschema.protocols.Validator | None] = {}

    def problem(self, event_type: str, data: Any) -> str | None:
        validator = self._validator(event_type)
        if validator is None:
            return None
        error = jsonschema.exceptions.best_match(validator.iter_errors(data))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"at {where}: {error.message}"

    def has_schema(self, event_type: str) -> bool:
        return self._validator(event_type) is not None

    def _validator(self, event_type: str) -> jsonschema.protocols.Validator | None:
        if event_type not in self._validators:
            spec = self.topology.events.get(event_type)
            schema = spec.json_schema if spec is not None else None
            self._validators[event_type] = (
                jsonschema.Draft202012Validator(schema) if schema is not None else None
            )
        return self._validators[event_type]
