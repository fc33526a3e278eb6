"""`bus.produce.frames` writes exactly the bytes pamqp (and so aiormq's `basic_publish`) would."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pamqp.frame
import pytest
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from bus.envelope import Event, Wire, encode, new_traceparent
from bus.produce.frames import FRAME_OVERHEAD, PublishFrames, to_properties

CHANNEL = 7
FRAME_MAX = 131_072


def pamqp_frames(wire: Wire, exchange: str, routing_key: str, max_body: int) -> bytes:
    """What aiormq's `basic_publish` marshals for the same publish."""
    frames: list[Any] = [
        Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True),
        ContentHeader(properties=to_properties(wire), body_size=len(wire.body)),
    ]
    frames += [ContentBody(wire.body[i : i + max_body]) for i in range(0, len(wire.body), max_body)]
    return b"".join(pamqp.frame.marshal(f, CHANNEL) for f in frames)


def events() -> list[Event]:
    rnd = random.Random(18)
    out = [
        Event(type="order.placed", data={"order_id": "o-1"}, source="orders-api"),
        Event(type="order.placed", data={"order_id": "ö-ü-€"}, source="shop", id="id-ü",
              traceparent=new_traceparent(), correlation_id="corr-1", causation_id="cause"),
        Event(type="x.y", data=[], source="s", time=datetime(2024, 1, 2, 3, 4, 5, 678)),  # naive
        Event(type="x.y", data="text", source="s",
              time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))),
        Event(type="big.one", data={"blob": "x" * 300_000}, source="s"),  # several body frames
        Event(type="a", data=None, source="", correlation_id=""),  # empty strings: left out
    ]  # fmt: skip
    for i in range(50):
        out.append(Event(type=f"t.{i % 3}", data={"n": i, "s": "é" * rnd.randrange(40)},
                         source=f"src-{i % 2}", traceparent=new_traceparent()))  # fmt: skip
    return out


@pytest.mark.parametrize("event", events(), ids=lambda e: e.type)
def test_frames_are_byte_for_byte_what_pamqp_marshals(event: Event) -> None:
    wire = encode(event)
    frames = PublishFrames(CHANNEL, FRAME_MAX - FRAME_OVERHEAD)
    for _ in range(2):  # the second time from the caches
        assert frames.frames(wire, "shop.events", event.type) == pamqp_frames(
            wire, "shop.events", event.type, FRAME_MAX - FRAME_OVERHEAD
        )


def test_headers_of_other_types_and_long_names_are_encoded_as_pamqp_does() -> None:
    wire = encode(Event(type="order.placed", data={}, source="s"))
    wire.headers.update({
        "bus-delay-seconds": 86_400, "flag": True, "ratio": 0.5, "nested": {"a": [1, "b"]},
        "when": datetime(2024, 5, 6, tzinfo=UTC), "n" * 200: "long name", "none": None,
    })  # fmt: skip
    frames = PublishFrames(CHANNEL, FRAME_MAX - FRAME_OVERHEAD)
    assert frames.frames(wire, "", "q.retry.1m") == pamqp_frames(
        wire, "", "q.retry.1m", FRAME_MAX - FRAME_OVERHEAD
    )


def test_a_string_property_over_255_bytes_is_refused_as_pamqp_refuses_it() -> None:
    wire = encode(Event(type="order.placed", data={}, source="s", id="i" * 300))
    with pytest.raises(TypeError, match="exceeds maximum length"):
        PublishFrames(CHANNEL, FRAME_MAX - FRAME_OVERHEAD).frames(wire, "ex", "order.placed")


def pamqp_copy(body: bytes, p: Basic.Properties, routing_key: str, max_body: int) -> bytes:
    frames: list[Any] = [
        Basic.Publish(exchange="", routing_key=routing_key, mandatory=True),
        ContentHeader(properties=p, body_size=len(body)),
    ]
    frames += [ContentBody(body[i : i + max_body]) for i in range(0, len(body), max_body)]
    return b"".join(pamqp.frame.marshal(f, CHANNEL) for f in frames)


STAMP = datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC)
COPIES = {
    "a bus event": Basic.Properties(
        content_type="application/json", headers={"bus-key": "o-1", "bus-seq": 17}, delivery_mode=2,
        message_id="e-1", timestamp=STAMP, message_type="order.placed", app_id="shop",
    ),
    "with a correlation id": Basic.Properties(
        headers={"bus-key": "o-1"}, delivery_mode=2, message_id="e-2", timestamp=STAMP,
        correlation_id="c-1",
    ),
    "a foreign message: reply-to, priority, encoding, no timestamp": Basic.Properties(
        content_type="text/plain", content_encoding="gzip", headers={"bus-key": "k"},
        delivery_mode=2, priority=3, reply_to="replies", message_id="f-1",
    ),
    "without headers": Basic.Properties(delivery_mode=2, message_id="s-1", timestamp=STAMP),
    "a sentinel": Basic.Properties(headers={"bus-lap-sentinel": "t"}, delivery_mode=2,
                                   message_id="sentinel-1"),
}  # fmt: skip


@pytest.mark.parametrize("properties", COPIES.values(), ids=list(COPIES))
@pytest.mark.parametrize("body", [b"{}", b"", b"x" * 300_000], ids=["small", "empty", "big"])
def test_a_copy_is_byte_for_byte_what_pamqp_marshals(
    properties: Basic.Properties, body: bytes
) -> None:
    frames = PublishFrames(CHANNEL, FRAME_MAX - FRAME_OVERHEAD)
    assert frames.copy(body, properties, "", "q.p1") == pamqp_copy(
        body, properties, "q.p1", FRAME_MAX - FRAME_OVERHEAD
    )
