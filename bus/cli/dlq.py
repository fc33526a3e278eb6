"""`bus dlq list | show | replay | purge`."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from bus.amqp.connection import connect_plain
from bus.cli.common import (
    IdsOption,
    TopologyOption,
    UrlOption,
    confirm,
    console,
    nonempty_id,
    nonempty_ids,
    run_async,
    settings,
    topology_of,
)
from bus.errors import ConfigError
from bus.ops import dlq as dlq_ops
from bus.topology.model import Subscriber

app = typer.Typer(
    help="Inspect, replay, delete and purge a subscriber's dead-letter queue.",
    no_args_is_help=True,
)
SubArg = typer.Argument(..., metavar="SUBSCRIBER", help="A subscriber declared in the topology.")


def _sub(name: str, topology: str | None) -> tuple[str, Subscriber]:
    s = settings(topology=topology)
    try:
        return s.url, topology_of(s).subscriber(name)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None


def _url(url: str | None, fallback: str) -> str:
    return settings(url=url).url if url else fallback


async def _browse(url: str, sub: Subscriber, limit: int | None = None) -> list[dlq_ops.Parked]:
    conn = await connect_plain(url, "dlq")
    try:
        return await dlq_ops.browse(conn, sub, limit)
    finally:
        await conn.close()


@app.command("list")
def list_(
    subscriber: str = SubArg,
    limit: int | None = typer.Option(
        None, "--limit", help="Look at most at N messages (default: all)", show_default=False
    ),
    event_type: str | None = typer.Option(
        None, "--type", help="Only this event type (patterns: order.*, #) (default: any)"
    ),
    reason: str | None = typer.Option(
        None,
        "--reason",
        help="Only this dead reason: retries-exhausted, rejected, invalid, no-handler, "
        "delivery-limit (default: any)",
    ),
    exception: str | None = typer.Option(
        None,
        "--exception",
        help="Only failures whose exception type or message contains this text (default: any)",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Messages in SUBSCRIBER's DLQ with their failure, and counts by exception type."""
    default_url, sub = _sub(subscriber, topology)
    parked = run_async(_browse(_url(url, default_url), sub, limit))
    parked = dlq_ops.select(parked, event_type=event_type, reason=reason, exception=exception)
    if as_json:
        console.print_json(json.dumps([p.as_dict() for p in parked]))
        return
    table = Table(title=f"{sub.dlq}: {len(parked)} messages")
    for col in ("id", "type", "reason", "attempts", "exception", "failed at"):
        table.add_column(col, overflow="fold")
    for p in parked:
        exc = f"{p.exception_type}: {p.exception_message}" if p.exception_type else ""
        table.add_row(p.id, p.type, p.reason, p.attempts, exc[:120], p.failed_at)
    console.print(table)
    for name, count in dlq_ops.group_by_exception(parked).most_common():
        console.print(f"  {count:>6}  {name}")


@app.command()
def show(
    subscriber: str = SubArg,
    id: str = typer.Argument(
        ..., metavar="ID", help="The event id (message_id).", callback=nonempty_id
    ),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Headers, body and stack trace of one parked message."""
    default_url, sub = _sub(subscriber, topology)
    found = [p for p in run_async(_browse(_url(url, default_url), sub)) if p.id == id]
    if not found:
        raise ConfigError(f"no message with id {id!r} in {sub.dlq}")
    p = found[0]
    console.print(f"[bold]{p.type}[/] {p.id} — {p.reason} after {p.attempts} attempt(s)")
    console.print("[bold]headers[/]")
    for k, v in sorted(p.headers.items()):
        if k != "bus-exception-stacktrace":
            console.print(
                f"  {k}: {v!r}" if not isinstance(v, str) else f"  {k}: {v}", soft_wrap=True
            )
    console.print("[bold]body[/]")
    try:
        console.print_json(p.body.decode())
    except (UnicodeDecodeError, ValueError):
        console.print(repr(p.body[:2000]), soft_wrap=True)
    if p.stacktrace:
        console.print("[bold]stack trace[/]")
        console.print(p.stacktrace, markup=False, soft_wrap=True)


@app.command()
def replay(
    subscriber: str = SubArg,
    all_: bool = typer.Option(False, "--all", help="Replay every message."),
    ids: list[str] = IdsOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be replayed."),
    rate: float | None = typer.Option(
        None, "--rate", help="At most N messages per second (default: no limit)"
    ),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Republish DLQ messages to SUBSCRIBER's queue (confirmed, then removed from the DLQ)."""
    if all_ == bool(ids):
        raise typer.BadParameter("give either --all or one or more --id")
    default_url, sub = _sub(subscriber, topology)

    async def go() -> list[dlq_ops.Parked]:
        conn = await connect_plain(_url(url, default_url), "dlq")
        try:
            return await dlq_ops.replay(
                conn, sub, None if all_ else set(ids), dry_run=dry_run, rate=rate
            )
        finally:
            await conn.close()

    done = run_async(go())
    verb = "would replay" if dry_run else "replayed"
    for p in done:
        console.print(f"  {p.id}  {p.type}  ({p.reason})")
    if done or all_:  # ids that are all missing: the error alone, not "replayed 0" before it
        console.print(f"{verb} {len(done)} message(s) from {sub.dlq} to {sub.queue}")
    _none_missing(ids, done, sub)


def _none_missing(ids: list[str], found: list[dlq_ops.Parked], sub: Subscriber) -> None:
    """Exit 2, as `dlq show` does, when an id asked for is not in the DLQ."""
    missing = set(ids) - {p.id for p in found}
    if missing:
        raise ConfigError(
            f"not found in {sub.dlq}: {', '.join(sorted(missing))} (see `bus dlq list`)"
        )


@app.command()
def delete(
    subscriber: str = SubArg,
    ids: list[str] = typer.Option(
        ..., "--id", help="Delete this id (repeatable).", callback=nonempty_ids
    ),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Delete single messages from SUBSCRIBER's DLQ by id (the rest stay in place)."""
    default_url, sub = _sub(subscriber, topology)

    async def go() -> list[dlq_ops.Parked]:
        conn = await connect_plain(_url(url, default_url), "dlq")
        try:
            return await dlq_ops.delete(conn, sub, set(ids))
        finally:
            await conn.close()

    done = run_async(go())
    for p in done:
        console.print(f"  {p.id}  {p.type}  ({p.reason})", markup=False)
    console.print(f"deleted {len(done)} message(s) from {sub.dlq}", markup=False)
    _none_missing(ids, done, sub)


@app.command()
def purge(
    subscriber: str = SubArg,
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Do not ask (needed when stdin is not a terminal)."
    ),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Delete every message in SUBSCRIBER's DLQ."""
    default_url, sub = _sub(subscriber, topology)
    confirm(f"Delete every message in {sub.dlq}?", yes)

    async def go() -> int:
        conn = await connect_plain(_url(url, default_url), "dlq")
        try:
            return await dlq_ops.purge(conn, sub)
        finally:
            await conn.close()

    console.print(f"purged {run_async(go())} message(s) from {sub.dlq}")
