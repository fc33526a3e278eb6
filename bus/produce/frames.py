"""The AMQP frames of one publish (method, content header, body), marshalled straight from a `Wire`.

Pure data, like `bus.envelope`. The bytes are exactly pamqp's (the wire format does not change:
the unit tests compare both on many events), built without pamqp's
per-property dispatch: the `Basic.Publish` frame is the same for every event of one exchange and
routing key and is marshalled once; a header table whose values are all strings (every header the
bus writes but the delay's seconds) is encoded in one pass, with each name's bytes cached. Anything
else (other value types, over-long names or strings) goes through pamqp itself.
"""

from __future__ import annotations

import struct
from datetime import UTC
from typing import Any

import pamqp.encode
import pamqp.frame
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from bus.envelope import Wire

FRAME_METHOD, FRAME_HEADER, FRAME_BODY = 1, 2, 3
FRAME_END = b"\xce"
FRAME_OVERHEAD = 8  # type, channel, size before the payload; the end octet after it
_FRAME = struct.Struct(">BHI")
_HEADER_START = struct.Struct(">HxxQH")  # class id, weight (0), body size, property flags
_LONG = struct.Struct(">I")
_TIMESTAMP = struct.Struct(">Q")
_CLASS_BASIC = Basic.frame_id
# Basic.Properties flags (AMQP 0-9-1), in the order their values follow the flags
F_CONTENT_TYPE, F_HEADERS, F_DELIVERY_MODE = 0x8000, 0x2000, 0x1000
F_CORRELATION_ID, F_MESSAGE_ID, F_TIMESTAMP, F_TYPE, F_APP_ID = 0x0400, 0x80, 0x40, 0x20, 0x08
_PERSISTENT = b"\x02"
_NAMES_CACHED = 512  # header names whose encoding is kept (the bus writes a dozen)
_NAME_MAX = 128  # pamqp truncates longer names: leave those to it


def _frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return _FRAME.pack(frame_type, channel, len(payload)) + payload + FRAME_END


def _short(value: str) -> bytes:
    data = value.encode()
    if len(data) > 255:
        return pamqp.encode.short_string(value)  # raises pamqp's TypeError
    return bytes((len(data),)) + data


class PublishFrames:
    """Marshals publishes on one channel: `frames(wire, exchange, routing_key)` -> bytes."""

    def __init__(self, channel: int, max_body_frame: int) -> None:
        self.channel = channel
        self.max_body_frame = max_body_frame  # frame_max minus the frame's own 8 octets
        self._methods: dict[tuple[str, str], bytes] = {}
        self._names: dict[str, bytes] = {}

    def frames(self, wire: Wire, exchange: str, routing_key: str) -> bytes:
        """Basic.Publish (`mandatory`), the content header (persistent) and the body frames."""
        header = _frame(FRAME_HEADER, self.channel, self._properties(wire, len(wire.body)))
        return self._publish(wire.body, header, exchange, routing_key)

    def copy(self, body: bytes, p: Basic.Properties, exchange: str, routing_key: str) -> bytes:
        """The frames of a message published again as it came, with properties *p* (a move
        between queues): a bus event's through the wire form, any other through pamqp."""
        wire = as_wire(body, p)
        if wire is not None:
            return self.frames(wire, exchange, routing_key)
        header = pamqp.frame.marshal(ContentHeader(0, len(body), p), self.channel)
        return self._publish(body, header, exchange, routing_key)

    def _publish(self, body: bytes, header: bytes, exchange: str, routing_key: str) -> bytes:
        method = self._methods.get((exchange, routing_key))
        if method is None:
            method = self._method(exchange, routing_key)
        if not body:  # as pamqp: no body frame at all
            return method + header
        if len(body) < self.max_body_frame:  # the common case: one body frame
            return b"".join((method, header, _frame(FRAME_BODY, self.channel, body)))
        step = self.max_body_frame
        parts = [method, header]
        parts += (
            _frame(FRAME_BODY, self.channel, body[i : i + step]) for i in range(0, len(body), step)
        )
        return b"".join(parts)

    def _method(self, exchange: str, routing_key: str) -> bytes:
        frame = Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True)
        method = pamqp.frame.marshal(frame, self.channel)
        if len(self._methods) < _NAMES_CACHED:
            self._methods[(exchange, routing_key)] = method
        return method

    def _properties(self, wire: Wire, body_size: int) -> bytes:
        """The content header's payload: what pamqp's `Basic.Properties.marshal` writes for
        `to_properties(wire)` (below) (a property that is None or '' is left out)."""
        flags = F_DELIVERY_MODE | F_HEADERS
        parts: list[bytes] = []
        if wire.content_type:
            flags |= F_CONTENT_TYPE
            parts.append(_short(wire.content_type))
        parts.append(self._table(wire.headers))
        parts.append(_PERSISTENT)
        if wire.correlation_id:
            flags |= F_CORRELATION_ID
            parts.append(_short(wire.correlation_id))
        if wire.message_id:
            flags |= F_MESSAGE_ID
            parts.append(_short(wire.message_id))
        ts = wire.timestamp
        if ts is not None:
            flags |= F_TIMESTAMP
            if ts.tzinfo is None or ts.tzinfo.utcoffset(ts) is None:
                ts = ts.replace(tzinfo=UTC)  # as pamqp: a naive time is UTC
            parts.append(_TIMESTAMP.pack(int(ts.timestamp())))
        if wire.type:
            flags |= F_TYPE
            parts.append(_short(wire.type))
        if wire.app_id:
            flags |= F_APP_ID
            parts.append(_short(wire.app_id))
        return _HEADER_START.pack(_CLASS_BASIC, body_size, flags) + b"".join(parts)

    def _table(self, headers: dict[str, Any]) -> bytes:
        """A field table, names sorted (as pamqp writes it); strings as long strings ('S')."""
        if not headers:
            return b"\x00\x00\x00\x00"
        parts: list[bytes] = []
        names = self._names
        for key in sorted(headers):
            name = names.get(key)
            if name is None:
                if len(key.encode()) > _NAME_MAX:
                    return pamqp.encode.field_table(headers)
                name = _short(key)
                if len(names) < _NAMES_CACHED:
                    names[key] = name
            value = headers[key]
            if type(value) is str:
                data = value.encode()
                parts.append(name + b"S" + _LONG.pack(len(data)) + data)
            else:
                parts.append(name + pamqp.encode.encode_table_value(value))
        table = b"".join(parts)
        return _LONG.pack(len(table)) + table


def as_wire(body: bytes, p: Basic.Properties) -> Wire | None:
    """*p* as a wire form when it holds nothing else (`to_properties` gives it back): persistent,
    with a timestamp and headers, no priority, reply-to, expiry, encoding, user or cluster."""
    if (
        p.delivery_mode != 2 or p.timestamp is None or not p.headers or p.priority is not None
        or p.reply_to is not None or p.expiration is not None or p.content_encoding is not None
        or p.user_id is not None or p.cluster_id is not None
    ):  # fmt: skip
        return None
    return Wire(
        body=body, message_id=p.message_id or "", type=p.message_type or "",
        app_id=p.app_id or "", timestamp=p.timestamp, headers=p.headers,
        correlation_id=p.correlation_id, content_type=p.content_type or "",
    )  # fmt: skip


def to_properties(wire: Wire) -> Basic.Properties:
    """The AMQP properties of a wire form (persistent, JSON), built straight for aiormq:
    an `aio_pika.Message` costs ten times more to build and is only converted to these."""
    return Basic.Properties(
        content_type=wire.content_type,
        delivery_mode=2,
        headers=wire.headers,
        message_id=wire.message_id,
        timestamp=wire.timestamp,
        message_type=wire.type,
        app_id=wire.app_id,
        correlation_id=wire.correlation_id,
    )
