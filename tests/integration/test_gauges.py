"""Queue gauges: depths of Q, its retry queues and its DLQ, and the age of the DLQ's head."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import pytest
from prometheus_client import CollectorRegistry

from bus.amqp.connection import connect_plain
from bus.metrics import Metrics
from bus.ops.gauges import QueueGauges, failed_at
from bus.topology.model import Subscriber
from tests.conftest import wait_for
from tests.integration.helpers import applied, get_all, make_topology

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")  # as bus.retry writes bus-failed-at


async def put(url: str, queue: str, *messages: dict[str, Any]) -> None:
    """Publish straight into *queue* (default exchange), with confirms."""
    conn = await connect_plain(url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        for spec in messages:
            message = aio_pika.Message(
                b"{}",
                message_id=spec["id"],
                type="order.placed",
                headers=spec.get("headers", {}),
                timestamp=spec.get("timestamp"),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await channel.default_exchange.publish(message, routing_key=queue)
    finally:
        await conn.close()


def gauge(metrics: Metrics, name: str, queue: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"queue": queue})


def depth(metrics: Metrics, queue: str) -> float | None:
    return gauge(metrics, "bus_queue_messages", queue)


def oldest(metrics: Metrics, queue: str) -> float | None:
    return gauge(metrics, "bus_dlq_oldest_message_age_seconds", queue)


def subscriber(prefix: str, queue_type: str = "quorum") -> tuple[Any, Subscriber]:
    # 1m: messages put in the retry queue stay there for the whole test
    topology = make_topology(prefix, {"sub": {}}, delays=["1m", "5m"], queue_type=queue_type)
    return topology, topology.subscriber("sub")


# -- pure: when did a parked message fail? -------------------------------------------------------


def test_failed_at_prefers_the_bus_header_then_x_death_then_the_amqp_timestamp() -> None:
    header = NOW - timedelta(minutes=5)
    death = NOW - timedelta(minutes=7)
    amqp = datetime(2024, 5, 1, 11, 0)  # naive, as aio-pika returns it: means UTC
    x_death = [{"reason": "delivery_limit", "time": death.replace(tzinfo=None)}]
    assert failed_at({"bus-failed-at": stamp(header)}, amqp, NOW) == header
    assert failed_at({"bus-failed-at": stamp(header).encode()}, amqp, NOW) == header
    assert failed_at({"x-death": x_death}, amqp, NOW) == death
    assert failed_at({"bus-failed-at": "not a date"}, amqp, NOW) == amqp.replace(tzinfo=UTC)
    assert failed_at(None, None, NOW) == NOW


# -- against the broker ----------------------------------------------------------------------


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_parked_and_retrying_messages_show_in_the_gauges_and_stay_parked(
    amqp_url: str, prefix: str, queue_type: str
) -> None:
    topology, sub = subscriber(prefix, queue_type)
    metrics = Metrics(CollectorRegistry())
    ninety_seconds_ago = datetime.now(UTC) - timedelta(seconds=90)
    async with applied(amqp_url, topology):
        await put(
            amqp_url,
            sub.dlq,
            {"id": "dead-1", "headers": {"bus-failed-at": stamp(ninety_seconds_ago)}},
            {"id": "dead-2", "headers": {"bus-failed-at": stamp(datetime.now(UTC))}},
            {"id": "dead-3", "timestamp": datetime.now(UTC)},
        )
        await put(amqp_url, sub.retry_queue("1m"), {"id": "r-1"}, {"id": "r-2"})
        await put(amqp_url, sub.queue, {"id": "q-1"})

        async with QueueGauges(sub, amqp_url, metrics, interval=0.1):
            await wait_for(lambda: depth(metrics, sub.dlq) == 3, message="DLQ depth 3")
            await wait_for(
                lambda: (oldest(metrics, sub.dlq) or 0) >= 90,
                message=f"oldest DLQ age >= 90s (is {oldest(metrics, sub.dlq)})",
            )
            assert depth(metrics, sub.retry_queue("1m")) == 2
            assert depth(metrics, sub.retry_queue("5m")) == 0
            assert depth(metrics, sub.queue) == 1
            age = oldest(metrics, sub.dlq)
            assert age is not None and 90 <= age < 150, f"age of dead-1 should be ~90s: {age}"

        remaining = await get_all(amqp_url, sub.dlq)
        ids = [m.message_id for m in remaining]
        assert ids == ["dead-1", "dead-2", "dead-3"], f"peeking changed the DLQ: {ids}"
        assert remaining[0].headers["bus-failed-at"] == stamp(ninety_seconds_ago)


async def test_the_age_follows_the_head_when_it_is_replayed_and_drops_to_zero_when_empty(
    amqp_url: str, prefix: str
) -> None:
    topology, sub = subscriber(prefix)
    metrics = Metrics(CollectorRegistry())
    now = datetime.now(UTC)
    async with applied(amqp_url, topology):
        await put(
            amqp_url,
            sub.dlq,
            {"id": "old", "headers": {"bus-failed-at": stamp(now - timedelta(hours=2))}},
            {"id": "new", "headers": {"bus-failed-at": stamp(now - timedelta(seconds=30))}},
        )
        async with QueueGauges(sub, amqp_url, metrics, interval=0.1):
            await wait_for(
                lambda: (oldest(metrics, sub.dlq) or 0) >= 7200, message="age of 'old' (~2h)"
            )
            conn = await connect_plain(amqp_url)  # someone replays the head
            try:
                queue = await (await conn.channel()).declare_queue(sub.dlq, passive=True)
                head = await queue.get(no_ack=True)
                assert head.message_id == "old"
            finally:
                await conn.close()
            await wait_for(
                lambda: 30 <= (oldest(metrics, sub.dlq) or 0) < 90,
                message=f"age of 'new' (~30s), is {oldest(metrics, sub.dlq)}",
            )
            await get_all(amqp_url, sub.dlq)  # and purges the rest
            await wait_for(lambda: depth(metrics, sub.dlq) == 0, message="DLQ depth 0")
            await wait_for(lambda: oldest(metrics, sub.dlq) == 0, message="age 0 when empty")


async def test_an_unreachable_broker_keeps_the_last_values_and_the_task_alive(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bus.ops.gauges")
    _, sub = subscriber(prefix)
    metrics = Metrics(CollectorRegistry())
    metrics.queue_messages.labels(sub.dlq).set(4)
    metrics.dlq_oldest_age.labels(sub.dlq).set(60)
    gauges = QueueGauges(sub, "amqp://guest:guest@127.0.0.1:1/", metrics, interval=0.05)
    await gauges.start()
    try:
        with pytest.raises(Exception, match="cannot reach RabbitMQ"):
            await gauges.refresh()

        def failures() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "queue gauges" in r.getMessage()]

        await wait_for(lambda: len(failures()) >= 3, message="three failed refreshes, logged")
        assert all(r.levelno == logging.DEBUG for r in failures())
        task = gauges._task
        assert task is not None and not task.done(), "the refresher died"
        assert depth(metrics, sub.dlq) == 4
        assert oldest(metrics, sub.dlq) == 60
    finally:
        await gauges.stop()
    assert gauges._task is None


async def test_the_refresher_reconnects_after_losing_its_connection(
    amqp_url: str, prefix: str
) -> None:
    topology, sub = subscriber(prefix)
    metrics = Metrics(CollectorRegistry())
    async with (
        applied(amqp_url, topology),
        QueueGauges(sub, amqp_url, metrics, interval=0.1) as gauges,
    ):
        await wait_for(lambda: depth(metrics, sub.dlq) == 0, message="first refresh")
        assert gauges._conn is not None
        await gauges._conn.close()  # as if the broker had dropped it
        await put(amqp_url, sub.dlq, {"id": "late"})
        await wait_for(lambda: depth(metrics, sub.dlq) == 1, message="refresh after reconnect")
