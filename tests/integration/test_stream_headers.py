"""Streams store messages as AMQP 1.0, which drops 0.9.1 header values that are arrays or tables.
Every header the bus writes (the CloudEvents attributes, the failure story, tracing) is a string
or a number, so an event read back from a stream carries all of them; only the broker's own
`x-death` (an array of tables) would not survive, and the bus never relies on it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest

from bus.amqp.connection import connect_plain
from bus.produce.publisher import Publisher
from bus.retry import DeadReason, dead, failure_headers
from tests.integration.helpers import applied, make_topology

pytestmark = pytest.mark.rabbitmq4


def scalar(value: Any) -> bool:
    return not isinstance(value, list | dict)


async def test_every_bus_header_survives_a_stream_and_arrays_or_tables_do_not(
    amqp_url: str, prefix: str
) -> None:
    topology = make_topology(prefix, {"email": {"keys": ["order.placed"]}})
    async with applied(amqp_url, topology):
        conn = await connect_plain(amqp_url)
        stream = f"{prefix}.history"
        try:
            channel = await conn.channel(publisher_confirms=True)
            queue = await channel.declare_queue(
                stream, durable=True, arguments={"x-queue-type": "stream"}
            )
            await queue.bind(f"{prefix}.events", "#")
            async with Publisher(amqp_url, topology) as pub:  # the CloudEvents headers
                await pub.publish("order.placed", {"order_id": "o-1"}, id="p-1")
            sub = topology.subscriber("email")
            sent = failure_headers(
                {}, decision=dead(sub, DeadReason.REJECTED), attempt=2, subscriber="email",
                handler="h", error=ValueError("boom"), now=datetime.now(UTC),
                exchange=f"{prefix}.events", routing_key="order.placed",
            )  # fmt: skip
            sent["traceparent"] = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
            sent["x-death"] = [{"count": 1, "reason": "rejected", "queue": "q"}]
            sent["a-table"] = {"k": "v"}
            await channel.default_exchange.publish(
                aio_pika.Message(b"{}", message_id="s-1", headers=sent, delivery_mode=2),
                routing_key=stream,
            )
            await channel.set_qos(prefetch_count=10)
            got: dict[str, dict[str, Any]] = {}
            both = asyncio.Event()

            async def take(m: aio_pika.abc.AbstractIncomingMessage) -> None:
                got[str(m.message_id)] = dict(m.headers)
                if len(got) == 2:
                    both.set()
                await m.ack()

            await queue.consume(take, arguments={"x-stream-offset": "first"})
            await asyncio.wait_for(both.wait(), 15)
            await queue.delete(if_unused=False, if_empty=False)
        finally:
            await conn.close()
    published, headers = got["p-1"], got["s-1"]
    assert {"cloudEvents_id", "cloudEvents_type", "cloudEvents_time"} <= set(published), published
    assert all(scalar(v) for v in published.values()), published
    kept = {k for k, v in sent.items() if scalar(v)}
    assert {"bus-attempt", "bus-dead-reason", "bus-exception-type"} <= kept
    assert kept <= set(headers), f"bus headers lost in the stream: {kept - set(headers)}"
    assert "x-death" not in headers and "a-table" not in headers, headers
    assert "x-stream-offset" in headers
