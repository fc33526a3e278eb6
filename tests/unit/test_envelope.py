"""bus.envelope: an event on the wire (JSON body, AMQP properties, CloudEvents headers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from bus.envelope import (
    Event,
    decode_body,
    decode_meta,
    dumps,
    encode,
    new_ids,
    new_traceparent,
)
from bus.errors import InvalidEvent

WHEN = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


def meta(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "message_id": None,
        "type": None,
        "app_id": None,
        "timestamp": None,
        "correlation_id": None,
        "headers": None,
    }
    return {**base, **fields}


def test_encode_sets_properties_from_the_event() -> None:
    event = Event(
        type="order.placed", data={"order_id": "o-1"}, id="op-123", source="shop",
        time=WHEN, correlation_id="c-9",
    )  # fmt: skip
    wire = encode(event)
    assert (wire.message_id, wire.type, wire.app_id) == ("op-123", "order.placed", "shop")
    assert wire.correlation_id == "c-9"
    assert wire.content_type == "application/json"
    assert wire.timestamp == WHEN
    assert json.loads(wire.body) == {"order_id": "o-1"}


def test_encode_sets_the_cloudevents_headers() -> None:
    wire = encode(Event(type="order.placed", data={}, id="op-1", source="shop", time=WHEN))
    assert wire.headers == {
        "cloudEvents_specversion": "1.0",
        "cloudEvents_id": "op-1",
        "cloudEvents_source": "shop",
        "cloudEvents_type": "order.placed",
        "cloudEvents_time": "2024-05-01T12:30:15.123456Z",
    }


def test_encode_writes_time_as_rfc3339_that_parses_back() -> None:
    wire = encode(Event(type="t", data=None, time=WHEN))
    stamp = wire.headers["cloudEvents_time"]
    assert stamp.endswith("Z") and "T" in stamp
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")) == WHEN


def test_encode_keeps_a_non_utc_offset() -> None:
    when = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert encode(Event(type="t", data=1, time=when)).headers["cloudEvents_time"] == (
        "2024-05-01T14:00:00+02:00"
    )


def test_encode_adds_traceparent_and_causation_only_when_known() -> None:
    plain = encode(Event(type="t", data=1))
    assert "traceparent" not in plain.headers and "bus-causation-id" not in plain.headers
    traced = encode(Event(type="t", data=1, traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
                          causation_id="e-0"))  # fmt: skip
    assert traced.headers["traceparent"].startswith("00-aaaa")
    assert traced.headers["bus-causation-id"] == "e-0"


def test_each_event_gets_its_own_random_id() -> None:
    assert Event(type="t", data=1).id != Event(type="t", data=1).id


def test_body_is_compact_utf8_json() -> None:
    assert dumps({"name": "Zoë", "n": [1, 2]}) == '{"name":"Zoë","n":[1,2]}'.encode()


def test_data_that_is_not_json_serialisable_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="not JSON-serialisable"):
        encode(Event(type="t", data={"when": object()}))


def test_decode_meta_round_trips_what_encode_wrote() -> None:
    wire = encode(Event(type="order.placed", data={}, id="op-1", source="shop", time=WHEN,
                        correlation_id="c-1", causation_id="e-0", traceparent="00-x-y-01"))  # fmt: skip
    m = decode_meta(
        message_id=wire.message_id, type=wire.type, app_id=wire.app_id,
        timestamp=wire.timestamp, correlation_id=wire.correlation_id, headers=wire.headers,
    )  # fmt: skip
    assert (m.id, m.type, m.source, m.time) == ("op-1", "order.placed", "shop", WHEN)
    assert (m.correlation_id, m.causation_id, m.traceparent) == ("c-1", "e-0", "00-x-y-01")


def test_foreign_producer_with_only_message_id_and_type_is_accepted() -> None:
    m = decode_meta(**meta(message_id="ext-1", type="order.placed"))
    assert (m.id, m.type, m.source, m.time) == ("ext-1", "order.placed", "unknown", None)


def test_foreign_producer_with_only_cloudevents_headers_is_accepted() -> None:
    headers = {
        "cloudEvents_id": b"ce-1",  # AMQP libraries may hand header strings over as bytes
        "cloudEvents_type": "order.placed",
        "cloudEvents_source": "other-app",
        "cloudEvents_time": "2024-05-01T12:30:15Z",
    }
    m = decode_meta(**meta(headers=headers))
    assert (m.id, m.type, m.source) == ("ce-1", "order.placed", "other-app")
    assert m.time == datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)


def test_properties_win_over_cloudevents_headers() -> None:
    m = decode_meta(**meta(message_id="p", type="a.b",
                           headers={"cloudEvents_id": "h", "cloudEvents_type": "c.d"}))  # fmt: skip
    assert (m.id, m.type) == ("p", "a.b")


def test_amqp_timestamp_is_used_when_there_is_no_cloudevents_time() -> None:
    m = decode_meta(**meta(message_id="1", type="t", timestamp=WHEN))
    assert m.time == WHEN


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({"type": "order.placed"}, "no id"),
        ({"message_id": "m-1"}, "no type"),
        ({}, "no id and type"),
        ({"message_id": "  ", "type": ""}, "no id and type"),
        ({"headers": {"cloudEvents_type": "order.placed"}}, "no id"),
        ({"message_id": b"\xff\xfe", "type": "t"}, "no id"),
    ],
)
def test_decode_meta_rejects_a_message_without_id_or_type(
    fields: dict[str, Any], missing: str
) -> None:
    with pytest.raises(InvalidEvent, match=f"message has {missing}"):
        decode_meta(**meta(**fields))


def test_decode_body_parses_utf8_json() -> None:
    assert decode_body('{"name": "Zoë"}'.encode()) == {"name": "Zoë"}


def test_decode_body_rejects_bytes_that_are_not_utf8() -> None:
    with pytest.raises(InvalidEvent, match="not UTF-8"):
        decode_body(b'{"name": "\xff"}')


@pytest.mark.parametrize("body", [b"", b"not json", b"{'a': 1}", b'{"a": 1'])
def test_decode_body_rejects_text_that_is_not_json(body: bytes) -> None:
    with pytest.raises(InvalidEvent, match="not JSON"):
        decode_body(body)


def test_new_traceparent_starts_a_well_formed_trace() -> None:
    version, trace, span, flags = new_traceparent().split("-")
    assert (version, flags) == ("00", "01")
    assert len(trace) == 32 and len(span) == 16
    assert set(trace + span) <= set("0123456789abcdef")


def test_new_traceparent_keeps_the_trace_id_of_its_parent() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    child = new_traceparent(parent)
    assert child.split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert child.split("-")[2] != "b7ad6b7169203331", "a child is a new span"
    assert child.split("-")[3] == "01"


def test_new_traceparent_ignores_a_malformed_parent() -> None:
    assert new_traceparent("garbage").split("-")[1] != "garbage"


def test_new_ids_are_distinct_uuid4_strings_as_uuid4_writes_them() -> None:
    import uuid

    ids = new_ids(2_000)
    assert len(set(ids)) == 2_000
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122, event_id
        assert str(parsed) == event_id
    assert new_ids(0) == []
