"""`bus status` (and the operational commands that grow here)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bus.amqp.connection import connect_plain
from bus.cli.common import TopologyOption, UrlOption, console, run_async, settings, topology_of
from bus.ops.partitions import PartitionState
from bus.ops.status import SubscriberState, collect
from bus.signals import stop_on_signals
from bus.topology.model import Topology


def register(app: typer.Typer) -> None:
    app.command("status")(status)


def status(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    fail_on_dlq: bool = typer.Option(
        False, "--fail-on-dlq", help="Exit 1 when any DLQ holds messages."
    ),
    watch: bool = typer.Option(
        False, "--watch", "-w", help="Refresh every --interval seconds until Ctrl-C."
    ),
    interval: float = typer.Option(2.0, "--interval", min=0.1, help="Seconds between refreshes."),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Per subscriber: ready messages, consumers, each retry queue and the DLQ."""
    s = settings(url, topology)
    t = topology_of(s)

    async def once() -> list[SubscriberState]:
        conn = await connect_plain(s.url, "status")
        try:
            return await collect(conn, t)
        finally:
            await conn.close()

    if watch:
        run_async(_watch(s.url, t, interval, as_json))
        return
    states = run_async(once())
    if as_json:
        console.print_json(json.dumps([st.as_dict() for st in states]))
    else:
        console.print(_table(states))
    if fail_on_dlq and any(st.dlq.ready for st in states):
        raise typer.Exit(1)


async def _watch(url: str, t: Topology, interval: float, as_json: bool) -> None:
    """The table again every *interval* seconds on one connection, in place on a terminal;
    Ctrl-C (or SIGTERM) ends it with exit 0."""
    stop = stop_on_signals()
    conn = await connect_plain(url, "status")
    live = (
        Live(console=console, auto_refresh=False) if console.is_terminal and not as_json else None
    )
    try:
        if live is not None:
            live.start()
        while not stop.is_set():
            states = await collect(conn, t)
            if as_json:
                print(json.dumps([st.as_dict() for st in states]), flush=True)
            elif live is not None:
                live.update(_table(states, time.strftime("%H:%M:%S")), refresh=True)
            else:
                console.print(_table(states, time.strftime("%H:%M:%S")))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        if live is not None:
            live.stop()
        await conn.close()


def _table(states: list[SubscriberState], at: str = "") -> Table:
    """One row per subscriber (names in cells are text, never rich markup)."""
    table = Table(title=f"bus status {at}".strip())
    for col in ("subscriber", "queue", "ready", "consumers", "retrying", "dlq"):
        table.add_column(
            col, justify="left" if col in ("subscriber", "queue", "retrying") else "right"
        )
    for st in states:
        if not st.queue.exists:
            table.add_row(Text(st.subscriber), Text(st.queue.name), "-", "-", "not applied", "-")
            continue
        retrying = ", ".join(f"{q.name.rsplit('.', 1)[-1]}={q.ready}" for q in st.retries) or "-"
        dlq = f"[red]{st.dlq.ready}[/]" if st.dlq.ready else "0"
        table.add_row(
            st.subscriber,
            st.queue.name,
            str(st.queue.ready),
            str(st.queue.consumers),
            retrying,
            dlq,
        )
        for p in st.partitions:  # an ordered subscriber's partitions, one row each
            table.add_row("", Text(p.queue.name), str(p.queue.ready), str(p.queue.consumers),
                          Text(_partition_text(p)), "")  # fmt: skip
    return table


def _partition_text(p: PartitionState) -> str:
    """`active host:pid; held: o-7 (12s, 3 waiting); hold 3`, for one partition row."""
    if not p.queue.exists:
        return "not applied"
    parts = [f"active {p.owner}" if p.owner else "active: no report (idle or stopped)"]
    now = time.time()
    if p.held:
        held = ", ".join(f"{h.key} ({now - h.since:.0f}s, {h.aside} waiting)" for h in p.held[:5])
        more = f" +{len(p.held) - 5}" if len(p.held) > 5 else ""
        parts.append(f"held: {held}{more}")
    if p.hold.ready:
        parts.append(f"in hold queue {p.hold.ready}")
    return "; ".join(parts)
