"""Options and helpers shared by the commands."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import typer
from rich.console import Console

from bus.settings import Settings
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

UrlOption = typer.Option(None, "--url", help="AMQP URL [env: BUS_URL]", show_default=False)
TopologyOption = typer.Option(
    None, "--topology", "-t", help="Topology file [env: BUS_TOPOLOGY]", show_default=False
)


def settings(
    url: str | None = None,
    topology: str | None = None,
    store_url: str | None = None,
    outbox_url: str | None = None,
    consumer_timeout: str | None = None,
) -> Settings:
    from pydantic import ValidationError

    from bus.errors import ConfigError

    try:
        return Settings.from_env(
            url=url,
            topology=topology,
            store_url=store_url,
            outbox_url=outbox_url,
            consumer_timeout=consumer_timeout,
        )
    except ValidationError as exc:
        raise ConfigError(
            "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        ) from None


def topology_of(s: Settings) -> Topology:
    return load_topology(s.topology)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)
