"""`bus saga list | show`: the instances of the sagas a subscriber hosts, from its store."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer

from bus.cli.common import StoreUrlOption, console, run_async, settings
from bus.errors import ConfigError
from bus.sagas import Detail, Instance, open_saga_store
from bus.stores import open_store

app = typer.Typer(help="Long-lived flows (sagas): their instances.", no_args_is_help=True)


def register(app_: typer.Typer, _topology_app: typer.Typer) -> None:
    app_.add_typer(app, name="saga")


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _object(i: Instance, d: Detail | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "saga": i.saga, "key": i.key, "status": i.status, "state": json.loads(i.state),
        "version": i.version, "created_at": _time(i.created_at), "updated_at": _time(i.updated_at),
    }  # fmt: skip
    if d is not None:
        out["steps"] = [
            {"event_id": s.event_id, "type": s.type, "at": _time(s.at)} for s in d.steps
        ]
        out["timeouts"] = [{"id": t.id, "type": t.type, "due_at": _time(t.due_at)}
                           for t in d.timeouts]  # fmt: skip
    return out


async def _details(store_url: str, subscriber: str, saga: str | None, key: str | None,
                   status: str | None, limit: int) -> list[dict[str, Any]]:  # fmt: skip
    store = await open_store(store_url)
    sagas = None
    try:
        sagas = await open_saga_store(store)
        if key is not None:
            assert saga is not None
            found = await sagas.detail(subscriber, saga, key, 0.0)
            if found is None:
                raise ConfigError(f"no {saga!r} saga with key {key!r} in subscriber {subscriber!r}")
            return [_object(found.instance, found)]
        out = []
        for i in await sagas.instances(subscriber, saga, status, limit):
            out.append(_object(i, await sagas.detail(subscriber, i.saga, i.key, 0.0)))
        return out
    finally:
        if sagas is not None:  # its own connection: left open, it keeps the process alive
            await sagas.close()
        await store.close()


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
    found = run_async(_details(s.store_url, subscriber, saga, None, status, limit))
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
    [o] = run_async(_details(s.store_url, subscriber, saga, key, None, 1))
    if as_json:
        print(json.dumps(o))
        return
    lines = [f"{o['saga']} {o['key']}: {o['status']} (version {o['version']})",
             f"state: {json.dumps(o['state'])}", "steps:"]  # fmt: skip
    lines += [f"  {st['at']}  {st['type']}  {st['event_id']}" for st in o["steps"]]
    lines.append("pending timeouts:" if o["timeouts"] else "pending timeouts: none")
    lines += [f"  {t['due_at']}  {t['type']}  {t['id']}" for t in o["timeouts"]]
    console.print("\n".join(lines), markup=False, highlight=False)
