"""With an OpenTelemetry SDK installed, publish and process spans form one trace."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bus import Context, Router, tracing
from bus.produce.publisher import Publisher
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology, running

trace = pytest.importorskip("opentelemetry.trace")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
export = pytest.importorskip("opentelemetry.sdk.trace.export")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")

SUBS = {"email": {"keys": ["order.placed"]}, "audit": {"keys": ["shipment.requested"]}}


@pytest.fixture(scope="module")
def spans() -> Any:
    exporter = in_memory.InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        provider = sdk_trace.TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    deadline = time.monotonic() + 3  # the bus looks for a new provider once a second
    while not tracing.active():
        assert time.monotonic() < deadline, "the bus never saw the SDK tracer provider"
        time.sleep(0.05)
    return exporter


async def test_publish_and_process_spans_follow_the_messaging_conventions_in_one_trace(
    amqp_url: str, prefix: str, spans: Any
) -> None:
    topology = make_topology(prefix, SUBS)
    email, audit = Router(), Router()
    done: list[str] = []

    @email.on("order.placed")
    async def placed(event: dict[str, Any], ctx: Context) -> None:
        await ctx.publish("shipment.requested", {"order_id": event["order_id"]})

    @audit.on("shipment.requested")
    async def requested(event: dict[str, Any], ctx: Context) -> None:
        done.append(ctx.id)

    async with (
        applied(amqp_url, topology),
        running(amqp_url, topology, "email", email),
        running(amqp_url, topology, "audit", audit),
        Publisher(amqp_url, topology) as pub,
    ):
        await pub.publish("order.placed", {"order_id": "o-1"}, id=f"{prefix}-root")
        await wait_for(lambda: done, message="the follow-up to be processed")
        await wait_for(lambda: len(_mine(spans, prefix)) >= 4, message="four spans")
    mine = _mine(spans, prefix)
    by_name = {s.name: s for s in mine}
    exchange = f"{prefix}.events"
    publish_root = next(
        s for s in mine
        if s.name == f"publish {exchange}" and s.attributes["messaging.message.id"] == f"{prefix}-root"
    )  # fmt: skip
    process_email = by_name[f"process {prefix}.email"]
    process_audit = by_name[f"process {prefix}.audit"]
    assert publish_root.kind == trace.SpanKind.PRODUCER
    assert process_email.kind == trace.SpanKind.CONSUMER
    assert process_email.attributes["messaging.system"] == "rabbitmq"
    assert process_email.attributes["messaging.message.id"] == f"{prefix}-root"
    trace_ids = {s.context.trace_id for s in mine}
    assert len(trace_ids) == 1, "publish, process, follow-up publish and process share one trace"
    assert process_email.parent.span_id == publish_root.context.span_id
    assert process_audit.parent is not None


def _mine(exporter: Any, prefix: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if prefix in s.name]


async def test_an_outbox_row_written_in_a_request_span_carries_that_trace_to_the_broker(
    amqp_url: str, prefix: str, spans: Any, tmp_path: Any
) -> None:
    import sqlite3

    from bus.outbox import Outbox
    from bus.outbox.schema import Dialect, ddl
    from tests.integration.helpers import get_all, queue_depth
    from tests.integration.outbox_kit import relaying

    topology = make_topology(prefix, {"audit": {"keys": ["#"]}})
    path = tmp_path / "outbox.db"
    with sqlite3.connect(path) as db:
        for statement in ddl(Dialect.SQLITE):
            db.execute(statement)
        with trace.get_tracer("api").start_as_current_span("POST /orders") as request:
            Outbox(topology, source="api").add_sync(db, "order.shipped", {}, id=f"{prefix}-o")
    trace_id = f"{request.get_span_context().trace_id:032x}"
    async with applied(amqp_url, topology), relaying(f"sqlite:///{path}", topology, amqp_url):
        await wait_for(lambda: queue_depth(amqp_url, f"{prefix}.audit"), message="the event")
        (message,) = await get_all(amqp_url, f"{prefix}.audit")
    assert str(message.headers["traceparent"]).split("-")[1] == trace_id, (
        "the relayed event continues the request's trace"
    )
