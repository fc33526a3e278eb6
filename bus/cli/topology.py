"""`bus topology validate | plan | apply | export`."""

from __future__ import annotations

import typer
from aio_pika.abc import AbstractConnection
from rich.text import Text

import bus.topology.delays as delays
from bus.amqp.connection import connect_plain
from bus.cli.common import (
    TopologyOption,
    UrlOption,
    confirm,
    console,
    run_async,
    settings,
    topology_of,
)
from bus.errors import BusError, NoHistory, TopologyError
from bus.ordering.repartition import Repartition, repartitions
from bus.settings import redact
from bus.topology import apply as applier
from bus.topology.diff import Action, Step, diff
from bus.topology.model import Topology
from bus.topology.plan import ExchangeDecl, QueueDecl, desired, is_delay_hand_off, is_delay_object

DropOption = typer.Option(
    False,
    "--drop-messages",
    help="With --prune: also delete queues no longer declared that still hold messages "
    "(the messages are lost). Queues something consumes are never deleted.",
)

app = typer.Typer(
    help="Validate, plan, apply and tear down topology/topology.yaml.", no_args_is_help=True
)


@app.command()
def validate(
    no_import: bool = typer.Option(
        False, "--no-import", help="Check the file only, without importing the handlers."
    ),
    topology: str | None = TopologyOption,
) -> None:
    """Check the file and import every subscriber's handlers: every problem at once, with its
    path in the file; exit code 2 when invalid."""
    from bus.consume.handlers import import_problems

    s = settings(topology=topology)
    t = topology_of(s)
    if not no_import:
        problems = import_problems(t)
        if problems:
            raise TopologyError(problems, source=s.topology)
    spec = t.spec
    counts = ", ".join(
        _n(len(part), noun)
        for part, noun in ((spec.exchanges, "exchange"), (spec.events, "event"),
                           (spec.subscribers, "subscriber"), (spec.schedules, "schedule"))
    )  # fmt: skip
    console.print(f"{s.topology}: valid ({counts})")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


async def _plan(
    url: str, t: Topology, prune: bool, execute: bool, drop_messages: bool = False
) -> tuple[list[Step], list[str]]:
    """The steps, and (when *execute*) the DLQ migrations that could not be made now."""
    conn = await connect_plain(url, "topology")
    try:
        want = desired(t, applier.release(conn))
        seen = await applier.observe(conn, want)
        steps = diff(want, seen, prune=prune, drop_messages=drop_messages)
        moves = repartitions(t, seen)
        _report_moves(moves)
        busy = [m for m in moves if m.busy]
        if execute and busy:
            raise BusError(busy[0].refusal())
        # a subscriber's own exchange that differs from the file: nothing made, rather than a
        # subscriber half rerouted (its queue's bindings removed, the exchange's not made)
        drifted = [(x.decl.key, x.detail) for x in steps if x.action is Action.DRIFT
                   and isinstance(x.decl, ExchangeDecl) and x.decl.owner]  # fmt: skip
        if execute and drifted:
            key, detail = drifted[0]
            raise BusError(f"{key} differs from the file: {detail}; delete it (the subscriber "
                           "holds no events) and apply again")  # fmt: skip
        refused = await applier.apply(conn, steps, want, seen.removed) if execute else []
        await _backfill(conn, t, steps, execute)
        return steps, refused
    finally:
        await conn.close()


async def _backfill(
    conn: AbstractConnection, t: Topology, steps: list[Step], execute: bool
) -> None:
    """After `apply` created (and bound) a new subscriber's queue, copy its `backfill:`; in
    `plan`, count what it would copy."""
    from bus.history import backfill

    for sub in backfill.due(t, steps):
        if any(t.history(b.exchange) is None for b in sub.bindings):
            continue  # the file's validation reports it
        try:
            out = await backfill.backfill(conn, t, sub, dry_run=not execute)
        except NoHistory:  # its log is created by this very apply: nothing to copy yet
            out = backfill.Outcome()
        verb = "copied" if execute else "will copy"
        console.print(
            f"backfill {sub.name}: {verb} {out.total} events of the last {sub.backfill} "
            f"into {sub.queue}",
            markup=False,
        )


def _report_moves(moves: list[Repartition]) -> None:
    """Changes of an ordered subscriber's `partitions`: what moves, what `apply` waits for."""
    for m in moves:
        console.print(Text(m.line(), style="yellow" if m.busy else "cyan"), soft_wrap=True)


_LEFTOVER = (Action.KEEP, Action.REFUSE, Action.DELETE)


def _report(all_steps: list[Step], verb: str) -> int:
    # the shared delay levels are summed up in one line; an event's hand-off queue that is no
    # longer declared is shown like any other leftover
    shown = [s for s in all_steps if not is_delay_object(s.decl) or s.action in _LEFTOVER]
    delay = [s for s in all_steps if s not in shown]
    steps = shown
    changes = [s for s in steps if s.action is not Action.UNCHANGED]
    changes += [s for s in delay if s.action is Action.DRIFT]
    for s in changes:
        style = {"create": "green", "migrate": "cyan", "delete": "red", "drift": "bold red",
                 "keep": "yellow", "refuse": "bold yellow"}[s.action]  # fmt: skip
        # a Text, not markup: rich would swallow a binding's `[order.placed]` as a tag
        console.print(Text(s.line(), style=style), soft_wrap=True)
    unchanged = len(steps) - len(changes)
    counts = {a: sum(1 for s in changes if s.action is a) for a in Action}
    summary = (
        f"{verb}: {counts[Action.CREATE]} to create, {counts[Action.DELETE]} to delete, "
        f"{unchanged} unchanged"
    )
    if counts[Action.MIGRATE]:
        summary += f", {counts[Action.MIGRATE]} to re-declare (messages kept)"
    if counts[Action.DRIFT]:
        summary += f", {counts[Action.DRIFT]} drifted (left alone: delete and re-apply to change)"
    if counts[Action.KEEP]:
        summary += f", {counts[Action.KEEP]} no longer declared (kept)"
    if counts[Action.REFUSE]:
        summary += f", {counts[Action.REFUSE]} refused (not empty or still consumed)"
    console.print(summary)
    fresh = sum(1 for s in delay if s.action is Action.CREATE)
    console.print(
        f"delay levels ({delays.PREFIX}.*, {delays.LEVELS} levels, delays up to "
        f"{delays.MAX_DELAY // 86400} days): "
        + (f"{fresh} of {len(delay)} objects to create" if fresh else "ready")
    )
    return 1 if counts[Action.DRIFT] else 0


@app.command()
def plan(
    prune: bool = typer.Option(
        False, "--prune", help="Show what `apply --prune` would remove, with each queue's messages."
    ),
    drop_messages: bool = DropOption,
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Show what `apply` would create or change on the live broker (changes nothing)."""
    if drop_messages and not prune:
        raise typer.BadParameter("--drop-messages goes with --prune", param_hint="--drop-messages")
    s = settings(url, topology)
    steps, _ = run_async(_plan(s.url, topology_of(s), prune, False, drop_messages))
    _report(steps, "plan")


@app.command()
def apply(
    prune: bool = typer.Option(
        False,
        "--prune",
        help="Remove what the file no longer declares (removed subscribers' queues included): "
        "empty queues nothing consumes, and bindings.",
    ),
    drop_messages: bool = DropOption,
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Create what the file declares and the broker lacks. Idempotent; drift is reported."""
    if drop_messages and not prune:
        raise typer.BadParameter("--drop-messages goes with --prune", param_hint="--drop-messages")
    s = settings(url, topology)
    steps, refused = run_async(_plan(s.url, topology_of(s), prune, True, drop_messages))
    code = _report(steps, "applied")
    for line in refused:
        console.print(Text(line, style="bold red"), soft_wrap=True)
    kept = [x for x in steps if x.action is Action.REFUSE and isinstance(x.decl, QueueDecl)]
    if kept:
        console.print(Text(_refusal(kept), style="bold red"), soft_wrap=True)
    if code or refused or kept:
        raise typer.Exit(1)


def _refusal(kept: list[Step]) -> str:
    """One line: the queues `apply --prune` left, and what would let it delete them."""
    full = [
        f"{x.decl.name} ({x.detail.split(':')[0]})" for x in kept if isinstance(x.decl, QueueDecl)
    ]
    hints = []
    if any("consumed" in x.detail for x in kept):
        hints.append("stop the subscribers that still consume them")
    if any(x.detail.startswith("holds") for x in kept):
        hints.append("drain them or add --drop-messages to delete them with their messages")
    return f"not deleted: {', '.join(full)}; {' and '.join(hints)}"


@app.command()
def teardown(
    force: bool = typer.Option(
        False, "--force", help="Also delete queues that still hold messages (they are lost)."
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Do not ask (needed when stdin is not a terminal)."
    ),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Remove what `apply` made: every queue of the file's subscribers, then its exchanges
    (kept while another topology's queues still use them). Asks first; refuses queues that
    hold messages unless --force."""
    s = settings(url, topology)
    # the delay levels are shared by every topology of the vhost (bus.topology.delays): never
    # ours alone; the hand-off queue of each of our event types is ours
    want = [d for d in desired(topology_of(s)) if not is_delay_object(d) or is_delay_hand_off(d)]

    async def go() -> tuple[list[applier.Present], list[str]]:
        conn = await connect_plain(s.url, "topology")
        try:
            present = await applier.inventory(conn, want)
            full = [p for p in present if p.messages]
            if full and not force:
                names = ", ".join(f"{p.name} ({p.messages})" for p in full)
                raise BusError(
                    f"refusing to delete queues that hold messages: {names}; "
                    "drain them (`bus dlq list`, `bus status`) or pass --force"
                )
            if not present:
                return present, []
            for p in present:
                console.print(f"- delete {p.kind} {p.name}"
                              + (f" ({p.messages} messages)" if p.messages else ""),
                              markup=False, soft_wrap=True)  # fmt: skip
            confirm(f"Delete these {len(present)} objects from {redact(s.url)}?", yes)
            return present, await applier.remove(conn, present)
        finally:
            await conn.close()

    present, kept = run_async(go())
    for name in kept:
        console.print(f"kept exchange {name}: other queues still use it", markup=False)
    console.print(f"teardown: {len(present) - len(kept)} deleted, {len(kept)} kept", markup=False)
