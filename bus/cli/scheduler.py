"""`bus scheduler [--dry-run] [--count N]`: fire the topology's `schedules:` (leader-elected)."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime

import typer

from bus.cli.common import TopologyOption, UrlOption, console, settings, topology_of
from bus.durations import label
from bus.errors import ConfigError
from bus.loop import name_of
from bus.loop import run as run_service
from bus.settings import Settings
from bus.signals import stop_on_signals
from bus.topology.model import Topology

log = logging.getLogger(__name__)


def register(app: typer.Typer, topology_app: typer.Typer) -> None:
    """Add `bus scheduler` to the CLI."""
    app.command("scheduler")(scheduler)


def scheduler(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the next firings of every schedule, with ids, and exit."
    ),
    count: int = typer.Option(5, "--count", "-n", min=1, help="Firings per schedule to print."),
    lock_queue: str = typer.Option(
        "bus.scheduler.lock",
        "--lock-queue",
        envvar="BUS_SCHEDULER_LOCK",
        help="The exclusive queue whose holder leads (its record is <lock-queue>.state).",
    ),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        envvar="BUS_METRICS_PORT",
        help="Serve /metrics, /healthz, /readyz on this port (default: off)",
    ),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Fire the topology's schedules: run any number of replicas, exactly one leads and fires.

    SIGTERM releases leadership (a standby replica takes over within about a second) and exits 0.
    """
    s = settings(url, topology)
    t = topology_of(s)
    if dry_run:
        try:
            _print_next(t, count, datetime.now(UTC))
        except ValueError as exc:  # a cron that matches no date, e.g. "0 0 30 2 *"
            raise ConfigError(str(exc)) from None
        return
    run_service(serve(s, t, lock_queue=lock_queue, metrics_port=metrics_port))


def _print_next(topology: Topology, count: int, now: datetime) -> None:
    from bus.scheduling.firings import describe, event_id, instant_text, next_firings

    schedules = topology.schedules()
    if not schedules:
        console.print(f"no schedules in {topology.source}", markup=False)
        return
    for s in schedules:
        catch_up = f", catch_up {label(s.catch_up_ms)}" if s.catch_up_ms else ""
        console.print(f"{s.name}: {s.event}, {describe(s)}{catch_up}", markup=False)
        for at in next_firings(s, now, count):
            local = ""
            if s.timezone != "UTC" and s.cron is not None:
                from zoneinfo import ZoneInfo

                local = f"  ({at.astimezone(ZoneInfo(s.timezone)).isoformat()})"
            console.print(f"  {instant_text(at)}  {event_id(s.name, at)}{local}", markup=False)


async def serve(
    s: Settings, topology: Topology, *, lock_queue: str, metrics_port: int | None
) -> None:
    """Run a scheduler replica until SIGTERM/SIGINT, then release leadership."""
    from bus.ops.health import HealthServer
    from bus.scheduling.leader import Scheduler

    sched = Scheduler(s.url, topology, lock_queue=lock_queue)
    sched.check()
    if not topology.schedules():
        raise ConfigError(f"no schedules in {topology.source}: nothing to fire")
    stop = stop_on_signals()
    loop = asyncio.get_running_loop()
    http = None
    if metrics_port is not None:
        http = HealthServer(metrics_port, sched.registry, loop, lambda: sched.connected).start()
    log.info("scheduler %d: campaigning for %s (%s loop)", os.getpid(), lock_queue, name_of())
    try:
        await sched.run(stop)
    finally:
        if http is not None:
            http.close()
    log.info("scheduler stopped")
