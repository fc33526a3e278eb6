"""An event on the wire: JSON body, AMQP properties and CloudEvents headers (AMQP binding).

Pure data: nothing here touches the network. The publisher turns a `Wire` into an aio-pika
message; the subscriber turns the fields of a delivery back into `Meta` and a body.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bus.errors import InvalidEvent

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
H_SPECVERSION = "cloudEvents_specversion"
H_ID = "cloudEvents_id"
H_SOURCE = "cloudEvents_source"
H_TYPE = "cloudEvents_type"
H_TIME = "cloudEvents_time"
H_TRACEPARENT = "traceparent"
H_CAUSATION = "bus-causation-id"
H_KEY = "bus-key"  # the ordering key: the value of the field the event type names as its `key`
H_AGAIN = "bus-replay-again"  # set by `bus replay --again`: its run handles the event once more


def idempotency_key(event_id: str, headers: Mapping[str, Any] | None) -> str:
    """The id a subscriber records as processed: the event id, or for a copy sent by
    `bus replay --again`, the event id within that replay run (handled once per run)."""
    run = (headers or {}).get(H_AGAIN)
    if isinstance(run, bytes | bytearray):
        run = bytes(run).decode(errors="replace")
    return f"{event_id}#again:{run}" if isinstance(run, str) and run else event_id


@dataclass(frozen=True, slots=True)
class Meta:
    """What a subscriber knows about a delivered event before parsing its body."""

    id: str
    type: str
    source: str
    raw_time: Any = None  # the cloudEvents_time header, parsed only when asked for
    timestamp: datetime | None = None  # the AMQP timestamp property, the fallback
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None

    @property
    def time(self) -> datetime | None:
        """When the event happened: `cloudEvents_time`, else the AMQP timestamp."""
        return header_time(self.raw_time, self.timestamp)


@dataclass(frozen=True, slots=True)
class Wire:
    """Body, properties and headers of one AMQP message, ready to publish."""

    body: bytes
    message_id: str
    type: str
    app_id: str
    timestamp: datetime
    headers: dict[str, Any]
    correlation_id: str | None = None
    content_type: str = CONTENT_TYPE


@dataclass(frozen=True, slots=True)
class Event:
    """An event to publish."""

    type: str
    data: Any
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    source: str = "bus"
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None


# built once: `json.dumps` with options builds an encoder per call (a quarter of its cost here)
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(data: Any) -> bytes:
    """JSON of *data*, UTF-8, compact. Raises InvalidEvent when it is not JSON-serialisable."""
    try:
        return _JSON.encode(data).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"event data is not JSON-serialisable: {exc}") from None


def encode(event: Event, key: str | None = None) -> Wire:
    """The wire form of *event*: routing key and `type` are the event type, `message_id` its id;
    *key*, the event's ordering key (`key_at`), goes in the `bus-key` header."""
    headers: dict[str, Any] = {
        H_SPECVERSION: SPECVERSION,
        H_ID: event.id,
        H_SOURCE: event.source,
        H_TYPE: event.type,
        H_TIME: event.time.isoformat().replace("+00:00", "Z"),
    }
    if event.traceparent:
        headers[H_TRACEPARENT] = event.traceparent
    if event.causation_id:
        headers[H_CAUSATION] = event.causation_id
    if key is not None:
        headers[H_KEY] = key
    return Wire(
        body=dumps(event.data),
        message_id=event.id,
        type=event.type,
        app_id=event.source,
        timestamp=event.time,
        headers=headers,
        correlation_id=event.correlation_id,
    )


def key_at(data: Any, path: str) -> str | None:
    """The ordering key of *data*: the value at the dotted *path* (``order.id``) as text, or None
    when a step is missing or the value is null, a mapping or a list."""
    value = data
    for step in path.split("."):
        if not isinstance(value, Mapping) or step not in value:
            return None
        value = value[step]
    if value is None or isinstance(value, Mapping | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else _JSON.encode(value)


def header_text(value: Any) -> str | None:
    """A header or property as text: str, or UTF-8 bytes (AMQP longstr); None when empty,
    blank or not text."""
    if type(value) is str:  # the common case, first
        return value if value.strip() else None
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode()
        except UnicodeDecodeError:
            return None
    if isinstance(value, str) and value.strip():
        return value
    return None


def header_time(value: Any, fallback: datetime | None = None) -> datetime | None:
    """A header or property as an aware datetime: an AMQP timestamp (naive means UTC) or RFC 3339
    text; *fallback* when it is neither."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = header_text(value)
    if text:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except ValueError:
            pass
    return fallback


def decode_meta(
    *,
    message_id: str | None,
    type: str | None,
    app_id: str | None,
    timestamp: datetime | None,
    correlation_id: str | None,
    headers: Mapping[str, Any] | None,
) -> Meta:
    """Id, type and context of a delivery. Properties win over `cloudEvents_*` headers.

    Raises InvalidEvent when the message has no id or no type: without an id there is no
    idempotency key, without a type no handler can be chosen.
    """
    h = headers or {}
    event_id = header_text(message_id) or header_text(h.get(H_ID))
    event_type = header_text(type) or header_text(h.get(H_TYPE))
    if event_id is None or event_type is None:
        missing = " and ".join(n for n, v in (("id", event_id), ("type", event_type)) if v is None)
        raise InvalidEvent(f"message has no {missing} (message_id/type or cloudEvents_* headers)")
    return Meta(
        id=event_id,
        type=event_type,
        source=header_text(app_id) or header_text(h.get(H_SOURCE)) or "unknown",
        raw_time=h.get(H_TIME),
        timestamp=timestamp,
        correlation_id=header_text(correlation_id),
        causation_id=header_text(h.get(H_CAUSATION)),
        traceparent=header_text(h.get(H_TRACEPARENT)),
    )


def decode_body(body: bytes) -> Any:
    """The event's data. Raises InvalidEvent when the body is not UTF-8 JSON."""
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidEvent("body is not UTF-8") from None
    except ValueError as exc:
        raise InvalidEvent(f"body is not JSON: {exc}") from None


def new_ids(n: int) -> list[str]:
    """*n* random event ids, UUID version 4 as `str(uuid.uuid4())` writes them, from one read of
    the system's randomness (`uuid4` reads it once per id: a system call each)."""
    raw = os.urandom(16 * n).hex()
    ids = []
    for at in range(0, 32 * n, 32):
        h = raw[at : at + 32]
        variant = "89ab"[int(h[16], 16) & 3]
        ids.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}")
    return ids


def new_traceparent(parent: str | None = None) -> str:
    """A W3C `traceparent`: a new span in *parent*'s trace, or a new trace."""
    span = f"{random.getrandbits(64):016x}"
    if parent:
        parts = parent.split("-")
        if len(parts) == 4 and len(parts[1]) == 32:
            return f"{parts[0]}-{parts[1]}-{span}-{parts[3]}"
    return f"00-{random.getrandbits(128):032x}-{span}-01"
