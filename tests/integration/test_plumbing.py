"""bus.amqp.plumbing on the real broker: record queues, passive counts, quiet closes."""

from __future__ import annotations

import uuid

import aio_pika

from bus.amqp import plumbing


async def test_a_record_queue_keeps_only_the_newest_body_and_reading_leaves_it(
    amqp_url: str,
) -> None:
    queue = f"test.record.{uuid.uuid4().hex[:8]}"
    conn = await aio_pika.connect(amqp_url)
    try:
        assert await plumbing.read_record(conn, queue) is None  # no queue yet
        await plumbing.write_record(conn, queue, b"first")
        await plumbing.write_record(conn, queue, b"second", content_type="text/plain")
        assert await plumbing.read_record(conn, queue) == b"second"
        assert await plumbing.read_record(conn, queue) == b"second"  # put back, not consumed
        counts = await plumbing.queue_counts(conn, queue)
        assert counts == plumbing.Counts(messages=1, consumers=0)
    finally:
        async with plumbing.scratch_channel(conn) as channel:
            await channel.queue_delete(queue)
        await conn.close()


async def test_counts_of_a_missing_queue_are_none_and_the_connection_stays_usable(
    amqp_url: str,
) -> None:
    conn = await aio_pika.connect(amqp_url)
    try:
        assert await plumbing.queue_counts(conn, f"test.none.{uuid.uuid4().hex}") is None
        channel = await conn.channel()
        await plumbing.close_quietly(channel)
        await plumbing.close_quietly(channel)  # twice: still quiet
        assert not conn.is_closed
    finally:
        await plumbing.close_quietly(conn)
    assert conn.is_closed
