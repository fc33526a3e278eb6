"""BUS_FRAME_READER, and the private aiormq and aio-pika parts the bus's frame reader needs."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import aiormq
import pamqp.frame
import pytest
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from pamqp.body import ContentBody
from pamqp.commands import Basic, Connection
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from bus.amqp import reader
from bus.errors import ConfigError


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, True), ({"BUS_FRAME_READER": "bus"}, True), ({"BUS_FRAME_READER": ""}, True),
     ({"BUS_FRAME_READER": "aiormq"}, False), ({"BUS_FRAME_READER": " AIORMQ "}, False)],
)  # fmt: skip
def test_the_setting_chooses_the_reader(environ: dict[str, str], expected: bool) -> None:
    assert reader.enabled(environ) is expected


def test_an_unknown_reader_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="BUS_FRAME_READER 'fast': use bus or aiormq"):
        reader.enabled({"BUS_FRAME_READER": "fast"})


def test_the_installed_aiormq_and_aio_pika_have_what_the_reader_replaces() -> None:
    # an upgrade that renames one of them falls back to aiormq's reader (with a warning):
    # this test says so first
    assert reader.supported()


class _Chunks:
    """A StreamReader stand-in handing out *data* in the given pieces, then EOF."""

    def __init__(self, data: bytes, cuts: list[int]) -> None:
        bounds = [0, *sorted(cuts), len(data)]
        self.pieces = [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]

    async def read(self, n: int) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


class _Channel:
    def __init__(self) -> None:
        self.frames: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()


def _stream() -> tuple[bytes, list[tuple[int, Any]]]:
    """Frames on channels 1 and 2, interleaved between deliveries, with what each channel
    should receive (pamqp's objects)."""
    props = Basic.Properties(message_id="m", headers={"x-attempt": 2}, delivery_mode=2)
    big = bytes(range(256)) * 40  # 10,240 bytes, sent as three body frames
    frames: list[tuple[int, Any]] = [
        (1, Basic.Deliver("t1", 1, False, "ex", "k")),
        (1, ContentHeader(0, len(big), props)),
        (1, ContentBody(big[:4000])),
        (2, Basic.QosOk()),
        (1, ContentBody(big[4000:8000])),
        (1, ContentBody(big[8000:])),
        (0, Heartbeat()),
        (2, Basic.Deliver("t2", 2, True, "", "q")),
        (2, ContentHeader(0, 0, Basic.Properties())),
        (1, Basic.Ack(5, multiple=True)),
    ]
    raw = b"".join(pamqp.frame.marshal(f, ch) for ch, f in frames)
    return raw, frames


def _summary(frame: Any) -> Any:
    if isinstance(frame, ContentHeader):
        return ("header", frame.body_size, frame.properties)
    if isinstance(frame, ContentBody):
        return ("body", frame.value)
    return (frame.name, {k: getattr(frame, k) for k in getattr(frame, "__slots__", ())})


@pytest.mark.parametrize("seed", range(20))
async def test_frames_cut_anywhere_reach_their_channels_whole_and_in_order(seed: int) -> None:
    raw, frames = _stream()
    rng = random.Random(seed)
    cuts = rng.sample(range(1, len(raw)), k=rng.randrange(1, 40))
    conn = reader.BufferedConnection("amqp://guest:guest@localhost:5672/")
    channels = {1: _Channel(), 2: _Channel()}
    conn.channels = channels  # type: ignore[assignment]
    with pytest.raises(AMQPConnectionError, match="unexpectedly closed"):
        await conn._read(_Chunks(raw, cuts))  # type: ignore[arg-type]
    for number, ch in channels.items():
        got = []
        while not ch.frames.empty():
            got.append(_summary(ch.frames.get_nowait()[1]))
        # a delivery's body arrives as one frame: aiormq's channel reads up to body_size
        body = b"".join(f.value for c, f in frames if c == number and isinstance(f, ContentBody))
        want = [_summary(f) for c, f in frames if c == number and not isinstance(f, ContentBody)]
        if body:
            want.insert(2, ("body", body))
        assert got == want


async def test_connection_blocked_and_unblocked_reach_the_connection() -> None:
    conn = reader.BufferedConnection("amqp://guest:guest@localhost:5672/")
    unblocked = conn._Connection__connection_unblocked  # type: ignore[attr-defined]
    unblocked.set()
    raw = pamqp.frame.marshal(Connection.Blocked("low on memory"), 0)
    with pytest.raises(AMQPConnectionError):
        await conn._read(_Chunks(raw, []))  # type: ignore[arg-type]
    assert not unblocked.is_set()
    raw = pamqp.frame.marshal(Connection.Unblocked(), 0)
    with pytest.raises(AMQPConnectionError):
        await conn._read(_Chunks(raw, []))  # type: ignore[arg-type]
    assert unblocked.is_set()


async def test_a_bad_frame_end_is_an_invalid_frame() -> None:
    conn = reader.BufferedConnection("amqp://guest:guest@localhost:5672/")
    raw = bytearray(pamqp.frame.marshal(Heartbeat(), 0))
    raw[-1] = 0
    with pytest.raises(InvalidFrameError):
        await conn._read(_Chunks(bytes(raw), []))  # type: ignore[arg-type]


def test_an_aiormq_without_the_replaced_reader_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(reader, "supported", lambda: False)
    monkeypatch.setattr(reader, "_warned", False)
    monkeypatch.delenv("BUS_FRAME_READER", raising=False)
    assert reader.wanted() is False
    assert reader.wanted() is False
    warnings = [
        r for r in caplog.records if "does not fit the bus's frame reader" in r.getMessage()
    ]
    assert len(warnings) == 1
    monkeypatch.setenv("BUS_FRAME_READER", "aiormq")
    assert reader.wanted() is False


async def test_a_consumer_in_the_inline_map_gets_its_deliveries_in_place_in_order() -> None:
    conn = reader.BufferedConnection("amqp://guest:guest@localhost:5672/")
    ch = aiormq.Channel.__new__(aiormq.Channel)  # only what the delivery path reads
    ch.frames = asyncio.Queue()
    ch.consumers = {"inline": _never, "tasked": _never}
    got: list[Any] = []
    setattr(ch, reader.INLINE, {"inline": got.append})
    conn.channels = {1: ch}  # type: ignore[dict-item]
    waiting = asyncio.create_task(ch.frames.get())  # the channel's own reader, idle
    await asyncio.sleep(0)
    try:
        for tag in (1, 2, 3):
            p = reader._Pending(Basic.Deliver("inline", tag, False, "", "q"))
            p.header, p.parts = ContentHeader(0, 1, Basic.Properties()), [b"x"]
            assert conn._delivered(1, p)
        assert [m.delivery.delivery_tag for m in got] == [1, 2, 3]  # no task, nothing queued
        assert ch.frames.empty()
    finally:
        waiting.cancel()


async def _never(message: Any) -> None:
    raise AssertionError("an inline consumer's callback is not run")
