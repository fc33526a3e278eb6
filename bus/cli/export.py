"""`bus topology export --format definitions|asyncapi [-o FILE]` (stdout by default)."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path

import typer

from bus.cli.common import TopologyOption, err, settings, topology_of
from bus.errors import ConfigError
from bus.topology import export as exporter
from bus.topology.release import Release


class Format(StrEnum):
    DEFINITIONS = "definitions"
    ASYNCAPI = "asyncapi"


def register(app: typer.Typer, topology_app: typer.Typer) -> None:
    """Add `export` to `bus topology`."""
    topology_app.command("export")(export)


def export(
    format: Format = typer.Option(
        ...,
        "--format",
        "-f",
        help="definitions: RabbitMQ definitions JSON (rabbitmqctl import_definitions); "
        "asyncapi: an AsyncAPI 3.0 document of the events.",
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write to FILE (default: stdout).", show_default=False
    ),
    vhost: str = typer.Option("/", "--vhost", help="definitions: the virtual host."),
    users: bool = typer.Option(
        False,
        "--users",
        help="definitions: add password-less users: one per subscriber, limited to its own "
        "queues and its `publishes:` events, and `producer`, limited to publishing the declared "
        "events; set each password with `rabbitmqctl change_password NAME PASSWORD`.",
    ),
    rabbitmq: str = typer.Option(
        "3.10",
        "--rabbitmq",
        help="definitions: the RabbitMQ release they are for (4.0 and later declare each "
        "quorum DLQ with x-delivery-limit -1, which 3.x must not get).",
    ),
    topology: str | None = TopologyOption,
) -> None:
    """Export the topology as RabbitMQ definitions or an AsyncAPI document."""
    t = topology_of(settings(topology=topology))
    if format is Format.DEFINITIONS:
        release = Release.parse(rabbitmq)
        doc = exporter.definitions(t, vhost=vhost, users=users, release=release)
    else:
        doc = exporter.asyncapi(t)
    text = exporter.to_json(doc)
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {output}: {exc.strerror or exc}") from None
    err.print(f"wrote {format} of {t.source} to {output}")
