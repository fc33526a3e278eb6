"""Decoding the three frames of a delivery, field for field as pamqp decodes them, faster.

pamqp decodes every frame generically: each attribute looked up by name, each value through a
dispatch on its type name, each step slicing a fresh copy of the rest of the frame. On the
consume path that was most of the client's CPU. These functions read the same bytes at offsets
into one buffer and build the same pamqp objects (`Basic.Deliver`, `ContentHeader` with
`Basic.Properties`), so everything downstream (aiormq's channel, `bus.amqp.delivery`) sees no
difference. A field-table value of a type other than the common ones (long string, integers,
boolean, nested table, timestamp, void) is decoded by pamqp itself.
tests/unit/test_amqp_wire.py checks the results equal pamqp's, value and type.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any

from pamqp import commands, decode
from pamqp.header import ContentHeader

Deliver = commands.Basic.Deliver
Properties = commands.Basic.Properties

_U8 = struct.Struct(">B").unpack_from
_U16 = struct.Struct(">H").unpack_from
_I32 = struct.Struct(">l").unpack_from
_U32 = struct.Struct(">I").unpack_from
_I64 = struct.Struct(">q").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_HEADER = struct.Struct(">HHQH").unpack_from  # class, weight, body size, first flag word
_UTC = datetime.UTC


def short_str(data: bytes, at: int) -> tuple[str, int]:
    n = data[at]
    at += 1
    return data[at : at + n].decode("utf-8"), at + n


def deliver(data: bytes, at: int) -> Deliver:
    """`Basic.Deliver` from its arguments at *at* (after the class and method ids)."""
    d = Deliver.__new__(Deliver)  # pamqp's unmarshal does not validate either
    d.consumer_tag, at = short_str(data, at)
    d.delivery_tag = _I64(data, at)[0]  # pamqp reads a longlong signed
    d.redelivered = bool(data[at + 8] & 1)
    d.exchange, at = short_str(data, at + 9)
    d.routing_key, at = short_str(data, at)
    return d


def header(data: bytes, at: int) -> ContentHeader:
    """`ContentHeader` (with its `Basic.Properties`) from the frame payload at *at*."""
    class_id, weight, body_size, flags = _HEADER(data, at)
    at += 14
    shift = 16
    word = flags
    while word & 1:  # a continuation flag word follows (never for Basic, kept as pamqp does)
        word = _U16(data, at)[0]
        flags |= word << shift
        shift += 16
        at += 2
    h = ContentHeader.__new__(ContentHeader)
    h.class_id, h.weight, h.body_size = class_id, weight, body_size
    h.properties = properties(data, at, flags)
    return h


_SHORT, _TABLE, _OCTET, _TIME = range(4)
_FIELDS = (  # Basic.Properties in flag order
    (0x8000, "content_type", _SHORT), (0x4000, "content_encoding", _SHORT),
    (0x2000, "headers", _TABLE), (0x1000, "delivery_mode", _OCTET), (0x0800, "priority", _OCTET),
    (0x0400, "correlation_id", _SHORT), (0x0200, "reply_to", _SHORT),
    (0x0100, "expiration", _SHORT), (0x0080, "message_id", _SHORT), (0x0040, "timestamp", _TIME),
    (0x0020, "message_type", _SHORT), (0x0010, "user_id", _SHORT), (0x0008, "app_id", _SHORT),
    (0x0004, "cluster_id", _SHORT),
)  # fmt: skip


def properties(data: bytes, at: int, flags: int) -> Properties:
    p = Properties.__new__(Properties)
    p.content_type = p.content_encoding = p.headers = p.delivery_mode = p.priority = None
    p.correlation_id = p.reply_to = p.expiration = p.message_id = p.timestamp = None
    p.message_type = p.user_id = p.app_id = None
    p.cluster_id = ""
    for flag, name, kind in _FIELDS:
        if not flags & flag:
            continue
        v: Any
        if kind == _SHORT:
            v, at = short_str(data, at)
        elif kind == _TABLE:
            v, at = table(data, at)
        elif kind == _OCTET:
            v = data[at]
            at += 1
        else:
            v = timestamp(data, at)
            at += 8
        setattr(p, name, v)
    return p


def timestamp(data: bytes, at: int) -> datetime.datetime:
    value: float = _U64(data, at)[0]
    if value > 0xFFFFFFFF:  # pamqp: anything above the year 2106 is likely milliseconds
        value /= 1000.0
    return datetime.datetime.fromtimestamp(value, tz=_UTC)


def table(data: bytes, at: int) -> tuple[dict[str, Any], int]:
    """A field table at *at*: the dict and the offset after it."""
    end = at + 4 + _U32(data, at)[0]
    if end > len(data):
        raise ValueError("Field table length exceeds available data")
    at += 4
    out: dict[str, Any] = {}
    while at < end:
        n = data[at]
        at += 1
        key = data[at : at + n].decode("utf-8")
        at += n
        out[key], at = value(data, at)
    return out, end


def value(data: bytes, at: int) -> tuple[Any, int]:
    """One typed field value at *at* (its type byte first): the value and the offset after."""
    kind = data[at]
    at += 1
    if kind == 0x53:  # S: long string, bytes when it is not UTF-8
        n = _U32(data, at)[0]
        at += 4
        raw = data[at : at + n]
        try:
            return raw.decode("utf-8"), at + n
        except UnicodeDecodeError:
            return raw, at + n
    if kind == 0x49:  # I
        return _I32(data, at)[0], at + 4
    if kind == 0x6C or kind == 0x4C:  # l, L (pamqp reads both signed)
        return _I64(data, at)[0], at + 8
    if kind == 0x74:  # t
        return bool(data[at]), at + 1
    if kind == 0x46:  # F
        return table(data, at)
    if kind == 0x54:  # T
        return timestamp(data, at), at + 8
    if kind == 0x56:  # V
        return None, at
    consumed, decoded = decode.embedded_value(bytes(data[at - 1 :]))  # the rarer types
    return decoded, at - 1 + consumed
