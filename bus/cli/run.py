"""`bus run SUBSCRIBER` and `bus publish TYPE --data JSON`."""

from __future__ import annotations

import json
import os

import typer

from bus.cli.common import TopologyOption, UrlOption, console, run_async, settings, topology_of
from bus.delays import seconds_of
from bus.errors import ConfigError
from bus.publisher import Publisher


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("publish")(publish)


def run(
    subscriber: str = typer.Argument(..., help="A subscriber declared in the topology."),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", envvar="BUS_METRICS_PORT", help="Serve /metrics, /healthz, /readyz."
    ),
    grace: float = typer.Option(
        float(os.environ.get("BUS_GRACE_PERIOD", 25)),
        "--grace-period",
        help="Seconds to drain in-flight handlers on SIGTERM (keep below the pod's "
        "terminationGracePeriodSeconds).",
    ),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
    store_url: str | None = typer.Option(None, "--store-url", help="[env: BUS_STORE_URL]"),
    consumer_timeout: str | None = typer.Option(
        None,
        "--consumer-timeout",
        help="The broker's consumer_timeout (30m unless it declares another); a subscriber "
        "`timeout` must be below it. [env: BUS_CONSUMER_TIMEOUT]",
    ),
) -> None:
    """Run one subscriber service until SIGTERM, then drain and exit 0."""
    from bus.service import serve

    s = settings(url, topology, store_url, consumer_timeout=consumer_timeout)
    run_async(serve(subscriber, s, metrics_port=metrics_port, grace=grace))


def publish(
    event_type: str = typer.Argument(..., metavar="TYPE", help="A declared event type."),
    data: str = typer.Option(..., "--data", "-d", help="The event's data as JSON."),
    id: str | None = typer.Option(
        None, "--id", help="Event id (idempotency key); random by default."
    ),
    delay: str | None = typer.Option(
        None,
        "--delay",
        help="Deliver after this long (10s, 5m, 3d; whole seconds, up to "
        "194 days), held by the broker's delay levels.",
    ),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Publish one event and wait for the broker's confirm."""
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"--data is not JSON: {exc}") from None
    try:
        seconds = seconds_of(delay) if delay is not None else None
    except ValueError as exc:
        raise ConfigError(f"--delay: {exc}") from None
    s = settings(url, topology)
    t = topology_of(s)

    publisher = Publisher(s.url, t, source="bus-cli")
    publisher.check(event_type, payload)  # refuse before connecting: exit 2 even with no broker

    async def go() -> str:
        async with publisher as pub:
            return await pub.publish(event_type, payload, id=id, delay=seconds)

    event_id = run_async(go())
    after = f", delivered in {seconds}s" if seconds is not None else ""
    console.print(f"published {event_type} {event_id}{after}")
