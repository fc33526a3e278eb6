"""`bus history EXCHANGE` and `bus replay SUBSCRIBER`: read the event log, copy it again."""

from __future__ import annotations

import json
import sys
from datetime import datetime

import typer

from bus.amqp.connection import connect_plain
from bus.cli.common import TopologyOption, UrlOption, confirm, console, run_async, settings
from bus.cli.common import topology_of as load
from bus.errors import ConfigError, NoHistory
from bus.history import History, HistoryEvent, Selection, parse_when
from bus.history.replay import Outcome, replay
from bus.history.select import without_history
from bus.topology.model import Subscriber, Topology

SinceOption = typer.Option(
    None,
    "--since",
    help="From this time: 1h, 7d (that long ago) or RFC 3339 (default: the oldest kept)",
    show_default=False,
)
UntilOption = typer.Option(
    None, "--until", help="Up to this time: 1h or RFC 3339 (default: now)", show_default=False
)
TypeOption = typer.Option(
    [],
    "--type",
    help="Event type or pattern (order.*, #), repeatable (default: every type)",
    show_default=False,
)


def when(text: str | None, option: str) -> datetime | None:
    """An option's time, or a usage error (exit 2) naming the option."""
    if text is None:
        return None
    try:
        return parse_when(text)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from None


def history(
    exchange: str = typer.Argument(..., metavar="EXCHANGE", help="An exchange with `history:`."),
    since: str | None = SinceOption,
    until: str | None = UntilOption,
    types: list[str] = TypeOption,
    id: str | None = typer.Option(None, "--id", help="Only the event with this id (default: any)"),
    correlation_id: str | None = typer.Option(
        None, "--correlation-id", help="Only events with this correlation id (default: any)"
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="At most N events (default: all)"
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line"),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Read an exchange's event log, oldest first, up to its end as the command starts."""
    s = settings(url, topology)
    t = load(s)
    if exchange not in t.exchanges:
        raise ConfigError(f"no exchange {exchange!r} in {s.topology}")
    if t.history(exchange) is None:
        raise NoHistory(f"exchange {exchange!r} keeps no history: add `history:` to it")
    start, end = when(since, "--since"), when(until, "--until")

    async def go() -> int:
        n = 0
        async with History(s.url) as h:
            async for e in h.read(
                exchange, since=start, until=end, types=types, id=id,
                correlation_id=correlation_id, limit=limit,
            ):  # fmt: skip
                n += 1
                _print(e, as_json, first=n == 1)
        return n

    n = run_async(go())
    if not as_json:
        console.print(f"{n} event{'' if n == 1 else 's'}", markup=False)


def _print(e: HistoryEvent, as_json: bool, *, first: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(e.as_json(), ensure_ascii=False) + "\n")
        return
    if first:
        console.print(f"{'time':<27} {'type':<24} {'id':<38} {'correlation':<16} data",
                      style="bold", markup=False)  # fmt: skip
    t = e.time.isoformat(timespec="milliseconds").replace("+00:00", "Z") if e.time else "?"
    data = json.dumps(e.data, ensure_ascii=False)
    data = data if len(data) <= 60 else data[:59] + "…"
    console.print(f"{t:<27} {e.type:<24} {e.id:<38} {e.correlation_id or '-':<16} {data}",
                  markup=False, soft_wrap=True)  # fmt: skip


def subscriber_of(t: Topology, name: str, source: str) -> Subscriber:
    """The subscriber to replay into; a usage error when unknown or bound to an exchange that
    keeps no history."""
    try:
        sub = t.subscriber(name)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    missing = without_history(t, sub)
    if missing:
        raise NoHistory(
            f"subscriber {name!r} is bound to exchange {missing[0]!r}, which keeps no history "
            f"(add `history:` to it in {source})"
        )
    return sub


def replay_command(
    subscriber: str = typer.Argument(..., metavar="SUBSCRIBER", help="The subscriber to feed."),
    since: str = typer.Option(..., "--since", help="From this time: 1h, 7d or RFC 3339"),
    until: str | None = UntilOption,
    types: list[str] = TypeOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be copied"),
    again: bool = typer.Option(
        False, "--again", help="Run events the subscriber already handled once more"
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask"),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Copy the history events SUBSCRIBER's bindings match into its own queue only."""
    s = settings(url, topology)
    t = load(s)
    sub = subscriber_of(t, subscriber, s.topology)
    selection = Selection(since=when(since, "--since"), until=when(until, "--until"),
                          types=tuple(types))  # fmt: skip
    if not dry_run:
        what = "once more, even those it handled" if again else "(handled ones are skipped)"
        confirm(f"Copy matching history events into queue {sub.queue!r} {what}?", yes)
    out = run_async(_replay(s.url, t, sub, selection, dry_run, again))
    verb = "would copy" if dry_run else "copied"
    for etype, n in sorted(out.per_type.items()):
        console.print(f"{etype:<32} {n}", markup=False)
    console.print(f"{verb} {out.total} events into {sub.queue}", markup=False)


async def _replay(
    url: str, t: Topology, sub: Subscriber, selection: Selection, dry_run: bool, again: bool
) -> Outcome:
    conn = await connect_plain(url, "replay", frames=True)
    try:
        if not console.is_terminal:
            return await replay(conn, t, sub, selection, dry_run=dry_run, again=again)
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("reading history", total=None)

            def progress(n: int, etype: str) -> None:  # once per batch read
                bar.update(task, description=f"{n} events ({etype})")

            return await replay(
                conn, t, sub, selection, dry_run=dry_run, again=again, progress=progress
            )
    finally:
        await conn.close()


def register(app: typer.Typer, topology_app: typer.Typer) -> None:
    app.command("history")(history)
    app.command("replay")(replay_command)
