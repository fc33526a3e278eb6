"""`bus saga list | show`: the instances of the sagas a subscriber hosts, from its store."""

from __future__ import annotations

import json
from typing import Any

import typer

from bus.cli.common import StoreUrlOption, console, run_async, settings
from bus.sagas.report import listing, reading, showing

app = typer.Typer(help="Long-lived flows (sagas): their instances.", no_args_is_help=True)


def register(app_: typer.Typer, _topology_app: typer.Typer) -> None:
    app_.add_typer(app, name="saga")


async def _list(store_url: str, subscriber: str, saga: str | None, status: str | None,
                limit: int) -> list[dict[str, Any]]:  # fmt: skip
    async with reading(store_url) as sagas:
        return await listing(sagas, subscriber, saga=saga, status=status, limit=limit)


async def _show(store_url: str, subscriber: str, saga: str, key: str) -> dict[str, Any]:
    async with reading(store_url) as sagas:
        return await showing(sagas, subscriber, saga, key)


@app.command("list")
def list_(
    subscriber: str = typer.Argument(..., help="The subscriber hosting the sagas."),
    saga: str | None = typer.Option(None, "--saga", help="Only this saga (default: all)."),
    status: str | None = typer.Option(
        None, "--status", help="running or completed (default: both)"
    ),
    limit: int = typer.Option(100, "--limit", help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    store_url: str | None = StoreUrlOption,
) -> None:
    """The instances of SUBSCRIBER's sagas, newest first."""
    if status not in (None, "running", "completed"):
        raise typer.BadParameter("use running or completed", param_hint="--status")
    s = settings(store_url=store_url)
    found = run_async(_list(s.store_url, subscriber, saga, status, limit))
    if as_json:
        for o in found:
            print(json.dumps(o))
        return
    if not found:
        console.print(f"no saga instances in {subscriber}")
    for o in found:
        console.print(
            f"{o['saga']:<16} {o['key']:<24} {o['status']:<10} steps {len(o['steps']):<4} "
            f"timeouts {len(o['timeouts']):<3} updated {o['updated_at']}",
            markup=False, highlight=False,
        )  # fmt: skip


@app.command("show")
def show(
    subscriber: str = typer.Argument(..., help="The subscriber hosting the saga."),
    saga: str = typer.Argument(..., help="The saga's name."),
    key: str = typer.Argument(..., help="The instance's key."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
    store_url: str | None = StoreUrlOption,
) -> None:
    """One instance: its state, status, every step (event id, type, time), pending timeouts."""
    s = settings(store_url=store_url)
    o = run_async(_show(s.store_url, subscriber, saga, key))
    if as_json:
        print(json.dumps(o))
        return
    lines = [f"{o['saga']} {o['key']}: {o['status']} (version {o['version']})",
             f"state: {json.dumps(o['state'])}", "steps:"]  # fmt: skip
    lines += [f"  {st['at']}  {st['type']}  {st['event_id']}" for st in o["steps"]]
    lines.append("pending timeouts:" if o["timeouts"] else "pending timeouts: none")
    lines += [f"  {t['due_at']}  {t['type']}  {t['id']}" for t in o["timeouts"]]
    console.print("\n".join(lines), markup=False, highlight=False)
