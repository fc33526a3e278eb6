"""`bus.amqp.wire` decodes a delivery's frames to exactly the objects pamqp builds."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pamqp.frame
import pytest
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from bus.amqp import wire

PROPERTY_NAMES = Basic.Properties.__slots__


def _payload(frame: Any) -> bytes:
    raw = pamqp.frame.marshal(frame, 1)
    return raw[7:-1]


def _same_properties(a: Basic.Properties, b: Basic.Properties) -> None:
    for name in PROPERTY_NAMES:
        va, vb = getattr(a, name), getattr(b, name)
        assert va == vb, name
        assert type(va) is type(vb), name
        if isinstance(va, dict):
            _same_table(va, vb)


def _same_table(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a == b
    for key in a:
        assert type(a[key]) is type(b[key]), key
        if isinstance(a[key], dict):
            _same_table(a[key], b[key])


HEADERS: list[dict[str, Any]] = [
    {},
    {"x-event-id": "e-1", "x-attempt": 3, "x-big": 2**40, "x-neg": -7, "x-flag": True},
    {"nested": {"a": "b", "n": {"deep": False}}, "list": [1, "two", {"three": 3}]},
    {"when": datetime(2026, 12, 6, 21, 0, tzinfo=UTC), "void": None},
    {"float": 1.5, "dec": Decimal("3.14"), "bytes": bytearray(b"\x00\xff")},
    {"unicode": "ünïcødé ✓", "empty": ""},
]


@pytest.mark.parametrize("headers", HEADERS)
def test_a_content_header_decodes_as_pamqp_decodes_it(headers: dict[str, Any]) -> None:
    props = Basic.Properties(
        content_type="application/json", content_encoding="utf-8", headers=headers,
        delivery_mode=2, priority=5, correlation_id="c", reply_to="r", expiration="1000",
        message_id="m-1", timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        message_type="orders.placed", user_id="guest", app_id="bus",
    )  # fmt: skip
    payload = _payload(ContentHeader(0, 1234, props))
    _, _, expected = pamqp.frame.unmarshal(pamqp.frame.marshal(ContentHeader(0, 1234, props), 1))
    got = wire.header(payload, 0)
    assert (got.class_id, got.weight, got.body_size) == (
        expected.class_id, expected.weight, expected.body_size,
    )  # fmt: skip
    _same_properties(got.properties, expected.properties)


def test_every_subset_of_properties_decodes_as_pamqp_decodes_it() -> None:
    rng = random.Random(27)
    full: dict[str, Any] = {
        "content_type": "a/b", "content_encoding": "gzip", "headers": {"k": "v"},
        "delivery_mode": 1, "priority": 0, "correlation_id": "c", "reply_to": "q",
        "expiration": "5", "message_id": "id", "timestamp": datetime(2030, 1, 1, tzinfo=UTC),
        "message_type": "t", "user_id": "u", "app_id": "a",
    }  # fmt: skip
    for _ in range(300):
        chosen = {k: v for k, v in full.items() if rng.random() < 0.5}
        header = ContentHeader(0, rng.randrange(0, 10**9), Basic.Properties(**chosen))
        _, _, expected = pamqp.frame.unmarshal(pamqp.frame.marshal(header, 3))
        got = wire.header(_payload(header), 0)
        assert got.body_size == expected.body_size
        _same_properties(got.properties, expected.properties)


def test_a_long_string_that_is_not_utf8_stays_bytes_as_in_pamqp() -> None:
    header = ContentHeader(0, 1, Basic.Properties(headers={"raw": "x"}))
    payload = bytearray(_payload(header))
    at = payload.index(b"Sraw"[1:]) + 3  # the 'S' value of key "raw": type byte, then length
    assert payload[at] == ord("S")
    payload[at + 5] = 0xFF  # the one byte of "x" becomes invalid UTF-8
    raw = pamqp.frame.marshal(header, 1)[:7] + bytes(payload) + b"\xce"
    _, _, expected = pamqp.frame.unmarshal(raw)
    got = wire.header(bytes(payload), 0)
    assert got.properties.headers == expected.properties.headers == {"raw": b"\xff"}


def test_a_millisecond_timestamp_reads_as_pamqp_reads_it() -> None:
    assert wire.timestamp((1_700_000_000_123).to_bytes(8, "big"), 0) == datetime.fromtimestamp(
        1_700_000_000.123, tz=UTC
    )


@pytest.mark.parametrize(
    ("tag", "delivery_tag", "redelivered", "exchange", "key"),
    [("bus.abc.1", 1, False, "bus.events", "orders.placed"), ("", 2**63 - 1, True, "", "")],
)
def test_a_deliver_decodes_as_pamqp_decodes_it(
    tag: str, delivery_tag: int, redelivered: bool, exchange: str, key: str
) -> None:
    frame = Basic.Deliver(tag, delivery_tag, redelivered, exchange, key)
    _, _, expected = pamqp.frame.unmarshal(pamqp.frame.marshal(frame, 1))
    got = wire.deliver(_payload(frame), 4)  # after the class and method ids
    for name in Basic.Deliver.__slots__:
        assert getattr(got, name) == getattr(expected, name), name
        assert type(getattr(got, name)) is type(getattr(expected, name)), name
