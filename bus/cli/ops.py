"""`bus status` (and the operational commands that grow here)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from bus.cli.common import TopologyOption, UrlOption, console, run_async, settings, topology_of
from bus.connection import connect_plain
from bus.status import SubscriberState, collect


def register(app: typer.Typer) -> None:
    app.command("status")(status)


def status(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    fail_on_dlq: bool = typer.Option(
        False, "--fail-on-dlq", help="Exit 1 when any DLQ holds messages."
    ),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Per subscriber: ready messages, consumers, each retry queue and the DLQ."""
    s = settings(url, topology)
    t = topology_of(s)

    async def go() -> list[SubscriberState]:
        conn = await connect_plain(s.url, "status")
        try:
            return await collect(conn, t)
        finally:
            await conn.close()

    states = run_async(go())
    if as_json:
        console.print_json(json.dumps([st.as_dict() for st in states]))
    else:
        table = Table(title="bus status")
        for col in ("subscriber", "queue", "ready", "consumers", "retrying", "dlq"):
            table.add_column(
                col, justify="left" if col in ("subscriber", "queue", "retrying") else "right"
            )
        for st in states:
            if not st.queue.exists:
                table.add_row(st.subscriber, st.queue.name, "-", "-", "not applied", "-")
                continue
            retrying = (
                ", ".join(f"{q.name.rsplit('.', 1)[-1]}={q.ready}" for q in st.retries) or "-"
            )
            dlq = f"[red]{st.dlq.ready}[/]" if st.dlq.ready else "0"
            table.add_row(
                st.subscriber,
                st.queue.name,
                str(st.queue.ready),
                str(st.queue.consumers),
                retrying,
                dlq,
            )
        console.print(table)
    if fail_on_dlq and any(st.dlq.ready for st in states):
        raise typer.Exit(1)
