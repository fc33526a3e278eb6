"""One event read back from a log, and its JSON line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bus.envelope import H_ID, H_TYPE, decode_meta, header_text, header_time
from bus.errors import InvalidEvent

MARKER = "bus-history-marker"  # header of a reader's end-of-log marker: never an event
OFFSET = "x-stream-offset"  # the broker adds it to every delivery from a stream


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """An event as it was published: id, type, time, source, correlation id, data, headers."""

    id: str
    type: str
    time: datetime | None
    source: str
    correlation_id: str | None
    data: Any
    headers: Mapping[str, Any] = field(default_factory=dict, repr=False)
    offset: int = -1  # its position in the log

    def as_json(self) -> dict[str, Any]:
        """The object `bus history --json` prints for it."""
        return {
            "id": self.id,
            "type": self.type,
            "time": self.time.isoformat().replace("+00:00", "Z") if self.time else None,
            "source": self.source,
            "correlation_id": self.correlation_id,
            "data": self.data,
        }


def decode(
    *,
    body: bytes,
    message_id: str | None,
    type_: str | None,
    app_id: str | None,
    timestamp: datetime | None,
    correlation_id: str | None,
    headers: Mapping[str, Any] | None,
) -> HistoryEvent | None:
    """The event of a log entry, or None for what is no event (a marker, a message without
    id or type). A body that is not JSON is kept as text."""
    h = dict(headers or {})
    if MARKER in h:
        return None
    offset = h.pop(OFFSET, -1)
    try:
        meta = decode_meta(
            message_id=message_id, type=type_, app_id=app_id, timestamp=timestamp,
            correlation_id=correlation_id, headers=h,
        )  # fmt: skip
    except InvalidEvent:
        return None
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = body.decode(errors="replace")
    return HistoryEvent(
        id=meta.id,
        type=meta.type,
        time=header_time(meta.raw_time, timestamp),
        source=meta.source,
        correlation_id=meta.correlation_id,
        data=data,
        headers=h,
        offset=offset if isinstance(offset, int) else -1,
    )


def peek(
    message_id: str | None, type_: str | None, headers: Mapping[str, Any]
) -> tuple[str, str] | None:
    """(id, type) of a log entry from its properties and headers alone, or None for what is no
    event (a marker, a message without id or type): what a replay's filter needs first, without
    decoding the body."""
    if MARKER in headers:
        return None
    event_id = header_text(message_id) or header_text(headers.get(H_ID))
    event_type = header_text(type_) or header_text(headers.get(H_TYPE))
    if not event_id or not event_type:
        return None
    return event_id, event_type
