"""Check an edited body before it is replayed: JSON, the event's schema, the handler's model.

The same three checks the subscriber runs on a delivery, in that order, so a body that passes
here is not parked again as `invalid` (its handler may of course still fail).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from bus.consume.router import Router
from bus.errors import InvalidEvent, UnknownEventType
from bus.produce.validation import EventChecker

EDITED_AT = "bus-edited-at"
EDITED_BY = "bus-edited-by"


@dataclass(frozen=True)
class Checked:
    """The outcome: the compact body to send, or every problem found (then nothing is sent)."""

    body: bytes | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.body is not None


def check_edit(checker: EventChecker, router: Router | None, event_type: str, text: str) -> Checked:
    """Validate *text* as the new data of an *event_type* event for the subscriber's *router*."""
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        return Checked(None, (f"not JSON: {exc}",))
    try:
        checker.check(event_type, data)
    except (UnknownEventType, InvalidEvent) as exc:
        return Checked(None, (str(exc),))
    handler = router.match(event_type) if router is not None else None
    if router is not None and handler is None:
        return Checked(None, (f"no handler of this subscriber takes {event_type!r}",))
    if handler is not None:
        try:
            handler.parse_data(data)
        except ValidationError as exc:
            return Checked(None, tuple(_problem(handler.name, e) for e in exc.errors()))
    return Checked(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(), ())


def _problem(handler: str, error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(root)"
    return f"{handler}'s model at {where}: {error['msg']}"
