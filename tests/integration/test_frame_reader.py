"""The bus's frame reader (bus.amqp.reader) on a real broker: every kind of frame still arrives.

Deliveries of every size (empty, one frame, split over frame_max) on several channels of one
connection while the same connection publishes with confirms, gets a message, has a mandatory
publish returned, has a consumer cancelled by the broker and a channel closed by an error.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from bus.amqp import reader
from bus.amqp.connection import connect
from bus.amqp.reader import BufferedConnection

pytestmark = pytest.mark.rabbitmq4

SIZES = [0, 1, 1000, 131_072 - 8, 131_072, 300_000, 1_000_003]
DEADLINE = 60.0


@pytest.fixture
async def conn(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    c = await connect(amqp_url, "test:frame-reader")
    if reader.enabled():  # BUS_FRAME_READER=aiormq runs these on aiormq's reader
        assert isinstance(c.transport.connection, BufferedConnection)  # type: ignore[union-attr]
    try:
        yield c
    finally:
        await c.close()


def _body(size: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


@pytest.mark.parametrize("path", ["direct", "queued"])
async def test_deliveries_of_every_size_arrive_whole_on_every_channel_beside_confirms(
    conn: AbstractRobustConnection, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "queued":  # as when the channel's reader is busy: through aiormq's channel queue
        monkeypatch.setattr(reader, "_idle", lambda frames: False)
    names = [f"test.reader.{uuid.uuid4().hex[:8]}.{i}" for i in range(3)]
    got: dict[str, list[AbstractIncomingMessage]] = {n: [] for n in names}
    want = len(SIZES) * 2
    done = asyncio.Event()
    publisher = await conn.channel()  # confirms on, on the same connection
    queues = []
    for name in names:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=5)
        queue = await channel.declare_queue(name, auto_delete=True)
        queues.append(queue)

        async def on_message(m: AbstractIncomingMessage, name: str = name) -> None:
            got[name].append(m)
            await m.ack()
            if all(len(v) == want for v in got.values()):
                done.set()

        await queue.consume(on_message)
    try:
        for rnd in range(2):
            for i, size in enumerate(SIZES):
                for name in names:
                    await publisher.default_exchange.publish(
                        aio_pika.Message(
                            _body(size, i + rnd), message_id=f"{rnd}.{i}",
                            headers={"x-size": size, "x-name": name, "x-nested": {"r": rnd}},
                            content_type="application/octet-stream",
                        ),
                        routing_key=name,
                    )  # fmt: skip
        await asyncio.wait_for(done.wait(), DEADLINE)
        for name in names:
            seen = {m.message_id: m for m in got[name]}
            assert len(seen) == want
            for rnd in range(2):
                for i, size in enumerate(SIZES):
                    m = seen[f"{rnd}.{i}"]
                    assert m.body == _body(size, i + rnd)
                    assert m.headers == {"x-size": size, "x-name": name, "x-nested": {"r": rnd}}
                    assert m.content_type == "application/octet-stream"
                    assert m.routing_key == name
    finally:
        for q in queues:
            await q.delete(if_unused=False, if_empty=False)


async def test_get_return_broker_cancel_and_a_channel_error_still_reach_their_callers(
    conn: AbstractRobustConnection,
) -> None:
    name = f"test.reader.{uuid.uuid4().hex[:8]}"
    channel = await conn.channel(on_return_raises=True)
    queue = await channel.declare_queue(name)
    big = _body(400_000, 3)
    await channel.default_exchange.publish(aio_pika.Message(big), routing_key=name)
    got = await queue.get(timeout=DEADLINE, fail=False)  # Basic.GetOk with a split body
    assert got is not None and got.body == big
    await got.ack()
    assert await queue.get(fail=False) is None  # Basic.GetEmpty

    with pytest.raises(aio_pika.exceptions.DeliveryError):  # Basic.Return, then the confirm
        await channel.default_exchange.publish(
            aio_pika.Message(big, message_id="returned"),
            routing_key=f"nowhere.{uuid.uuid4().hex}", mandatory=True,
        )  # fmt: skip

    consumer_channel = await conn.channel()
    cancelled = asyncio.Event()
    underlay = await consumer_channel.get_underlay_channel()

    async def on_cancel(frame: object) -> None:
        cancelled.set()

    underlay.on_consumer_cancel_callbacks.add(on_cancel)
    consumed = await consumer_channel.get_queue(name)

    async def ack(m: AbstractIncomingMessage) -> None:
        await m.ack()

    await consumed.consume(ack)
    await channel.queue_delete(name)  # the broker cancels the consumer: Basic.Cancel
    await asyncio.wait_for(cancelled.wait(), DEADLINE)

    broken = await conn.channel()
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):  # Channel.Close from the broker
        await broken.declare_queue(f"missing.{uuid.uuid4().hex}", passive=True)
    # the connection and its other channels carry on
    q2 = await channel.declare_queue(f"{name}.after", auto_delete=True)
    await channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=q2.name)
    after = await q2.get(timeout=DEADLINE, fail=False)
    assert after is not None and after.body == b"after"
    await after.ack()
    await q2.delete()  # auto_delete: only once a consumer has come and gone, and none did
    assert not conn.is_closed
