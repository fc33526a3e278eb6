"""Options and helpers shared by the commands."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import typer
from rich.console import Console

from bus.settings import DEFAULT_TOPOLOGY, DEFAULT_URL, Settings
from bus.topology.model import Topology
from bus.topology.model import load as load_topology

T = TypeVar("T")


@dataclass
class _State:
    debug: bool = False


state = _State()
# piped output (grep, CI logs) gets wide lines instead of rich's 80-column default
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False)

UrlOption = typer.Option(
    None,
    "--url",
    envvar="BUS_URL",
    help=f"AMQP URL, amqp:// or amqps:// (default: {DEFAULT_URL})",
    show_default=False,
)
TopologyOption = typer.Option(
    None,
    "--topology",
    "-t",
    envvar="BUS_TOPOLOGY",
    help=f"Topology file (default: {DEFAULT_TOPOLOGY})",
    show_default=False,
)
StoreUrlOption = typer.Option(
    None,
    "--store-url",
    envvar="BUS_STORE_URL",
    help="Idempotency store: sqlite:///path, postgresql://… or memory:// "
    "(default: sqlite:///.bus/processed.db beside the topology file)",
    show_default=False,
)


def _print_version(value: bool) -> None:
    if value:
        from bus import __version__

        print(f"bus {__version__}")
        raise typer.Exit()


version_option = typer.Option(
    False,
    "--version",
    callback=_print_version,
    is_eager=True,
    expose_value=True,
    help="Print the version and exit.",
)


def settings(
    url: str | None = None,
    topology: str | None = None,
    store_url: str | None = None,
    outbox_url: str | None = None,
    consumer_timeout: str | None = None,
) -> Settings:
    """The environment's settings with the command's options winning (ConfigError if bad)."""
    return Settings.from_env(
        url=url, topology=topology, store_url=store_url, outbox_url=outbox_url,
        consumer_timeout=consumer_timeout,
    )  # fmt: skip


def topology_of(s: Settings) -> Topology:
    return load_topology(s.topology)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def nonempty_id(value: str) -> str:
    """An event id given on the command line: an empty one would silently match nothing."""
    if not value.strip():
        raise typer.BadParameter("an event id must not be empty")
    return value


def nonempty_ids(values: list[str]) -> list[str]:
    return [nonempty_id(v) for v in values]


IdsOption = typer.Option(
    [],
    "--id",
    help="This id, repeatable (default: none).",
    callback=nonempty_ids,
    show_default=False,
)


def confirm(question: str, yes: bool) -> None:
    """Ask *question* unless *yes*; refuse (exit 2) without a terminal to ask on, and stop
    (exit 1) when the answer is no."""
    if yes:
        return
    if not sys.stdin.isatty():
        from bus.errors import ConfigError

        raise ConfigError(f"{question} Refusing without a terminal to ask on: pass --yes")
    if not typer.confirm(question):
        raise typer.Exit(1)
