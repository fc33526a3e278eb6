"""`bus run SUBSCRIBER` and `bus publish TYPE --data JSON`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from bus.cli.common import (
    StoreUrlOption,
    TopologyOption,
    UrlOption,
    console,
    nonempty_id,
    run_async,
    settings,
    topology_of,
)
from bus.errors import ConfigError
from bus.loop import run as run_service
from bus.produce.publisher import Publisher
from bus.topology.delays import seconds_of


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("publish")(publish)


def run(
    subscriber: str = typer.Argument(..., help="A subscriber declared in the topology."),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        envvar="BUS_METRICS_PORT",
        help="Serve /metrics, /healthz, /readyz on this port (default: off)",
    ),
    grace: float = typer.Option(
        25.0,
        "--grace-period",
        envvar="BUS_GRACE_PERIOD",
        help="Seconds to drain in-flight handlers on SIGTERM (keep below the pod's "
        "terminationGracePeriodSeconds).",
    ),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
    store_url: str | None = StoreUrlOption,
    consumer_timeout: str | None = typer.Option(
        None,
        "--consumer-timeout",
        envvar="BUS_CONSUMER_TIMEOUT",
        help="The broker's consumer_timeout; a subscriber `timeout` must be below it "
        "(default: 30m, RabbitMQ's own)",
    ),
    processes: int | None = typer.Option(
        None,
        "--processes",
        min=1,
        max=256,
        help="Consumer processes of this subscriber under one parent, which serves one "
        "/metrics (default: the subscriber's `processes:` in the topology, else 1)",
        show_default=False,
    ),
    ready_file: Path | None = typer.Option(
        None,
        "--ready-file",
        hidden=True,  # how a child of --processes tells its parent it consumes
        help="Keep this file while consuming (default: none)",
    ),
) -> None:
    """Run one subscriber service until SIGTERM, then drain and exit 0."""
    from bus.consume.service import serve

    s = settings(url, topology, store_url, consumer_timeout=consumer_timeout)
    run_service(
        serve(
            subscriber, s, metrics_port=metrics_port, grace=grace, processes=processes,
            ready_file=ready_file,
        )
    )  # fmt: skip


def publish(
    event_type: str = typer.Argument(..., metavar="TYPE", help="A declared event type."),
    data: str = typer.Option(
        ...,
        "--data",
        "-d",
        help="The event's data as JSON; @FILE reads it from a file, - from stdin.",
    ),
    id: str | None = typer.Option(
        None,
        "--id",
        help="Event id (idempotency key) (default: a random one)",
        callback=lambda v: v if v is None else nonempty_id(v),
    ),
    correlation_id: str | None = typer.Option(
        None, "--correlation-id", help="Correlation id of the event (default: none)"
    ),
    delay: str | None = typer.Option(
        None,
        "--delay",
        help="Deliver after this long (10s, 5m, 3d; whole seconds, up to "
        "194 days), held by the broker's delay levels (default: at once)",
    ),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Publish one event and wait for the broker's confirm (with --delay: delivered later)."""
    payload = _payload(data)
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
            return await pub.publish(
                event_type, payload, id=id, correlation_id=correlation_id, delay=seconds
            )

    event_id = run_async(go())
    after = f", delivered in {seconds}s" if seconds is not None else ""
    console.print(f"published {event_type} {event_id}{after}", markup=False)


def _payload(data: str) -> Any:
    """The JSON of `--data`: inline, `@FILE`, or `-` for stdin."""
    where = "--data"
    if data == "-":
        where, data = "stdin", sys.stdin.read()
    elif data.startswith("@"):
        path, where = data[1:], data[1:]
        try:
            with open(path, encoding="utf-8") as f:
                data = f.read()
        except OSError as exc:
            raise ConfigError(f"--data @{path}: cannot read it: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--data @{path}: not UTF-8 text") from None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"{where} is not JSON: {exc}") from None
