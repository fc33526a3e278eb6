"""`bus outbox init | status | retry` and `bus relay`: the producer's outbox."""

from __future__ import annotations

import json

import typer

from bus.cli.common import (
    IdsOption,
    TopologyOption,
    UrlOption,
    console,
    run_async,
    settings,
    topology_of,
)
from bus.loop import run as run_service
from bus.outbox import Status, open_outbox
from bus.outbox.schema import Dialect, dialect_of, script

app = typer.Typer(help="The producer's outbox table (`bus_outbox`).", no_args_is_help=True)

OutboxUrlOption = typer.Option(
    None,
    "--outbox-url",
    envvar="BUS_OUTBOX_URL",
    help="The producer's database: sqlite:///path or postgresql://… "
    "(default: sqlite:///.bus/outbox.db)",
    show_default=False,
)


def register(app_: typer.Typer, _topology_app: typer.Typer) -> None:
    app_.add_typer(app, name="outbox")
    app_.command("relay")(relay)


@app.command("init")
def init(
    sql: bool = typer.Option(
        False, "--sql", help="Print the DDL for a migration tool instead of running it."
    ),
    dialect: str | None = typer.Option(
        None, "--dialect", help="postgresql or sqlite, with --sql (default: from the URL)"
    ),
    outbox_url: str | None = OutboxUrlOption,
) -> None:
    """Create `bus_outbox` (idempotent), or print its DDL with --sql."""
    s = settings(outbox_url=outbox_url)
    if sql:
        chosen = Dialect(dialect) if dialect in ("postgresql", "sqlite") else None
        if dialect is not None and chosen is None:
            raise typer.BadParameter("use postgresql or sqlite", param_hint="--dialect")
        print(script(chosen or dialect_of(s.outbox_url)), end="")
        return

    async def go() -> None:
        outbox = await open_outbox(s.outbox_url, create=True)
        await outbox.close()

    run_async(go())
    console.print(f"outbox ready: bus_outbox in {_where(s.outbox_url)}", markup=False)


@app.command("status")
def status(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    outbox_url: str | None = OutboxUrlOption,
) -> None:
    """Rows waiting for a relay, the oldest one's age, and rows set aside (with why)."""
    s = settings(outbox_url=outbox_url)
    st = run_async(_status(s.outbox_url))
    if as_json:
        print(json.dumps(st.as_dict()))
        return
    console.print(
        f"pending {st.pending}, oldest {st.oldest_age_seconds:.1f}s, set aside {st.set_aside}",
        markup=False,
    )
    for r in st.set_aside_rows:
        console.print(f"  set aside {r.id} ({r.type}): {r.failure}", markup=False, soft_wrap=True)
    if st.set_aside > len(st.set_aside_rows):
        console.print(f"  … and {st.set_aside - len(st.set_aside_rows)} more", markup=False)
    if st.set_aside:
        console.print("  fix the cause, then `bus outbox retry --all` (or --id ID)", markup=False)


@app.command("retry")
def retry(
    ids: list[str] = IdsOption,
    all_: bool = typer.Option(False, "--all", help="Every set-aside row."),
    outbox_url: str | None = OutboxUrlOption,
) -> None:
    """Put set-aside rows back in line for the relay (after fixing what set them aside)."""
    if bool(ids) == all_:
        raise typer.BadParameter("give --all or at least one --id")
    s = settings(outbox_url=outbox_url)

    async def go() -> int:
        outbox = await open_outbox(s.outbox_url)
        try:
            return await outbox.retry(None if all_ else ids)
        finally:
            await outbox.close()

    console.print(f"{run_async(go())} rows back in line", markup=False)


def relay(
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        envvar="BUS_METRICS_PORT",
        help="Serve /metrics, /healthz, /readyz on this port (default: off)",
    ),
    batch: int = typer.Option(1000, "--batch", min=1, help="Rows per claim."),
    grace: float = typer.Option(
        25.0,
        "--grace-period",
        envvar="BUS_GRACE_PERIOD",
        help="Seconds to finish the batch in flight on SIGTERM.",
    ),
    outbox_url: str | None = OutboxUrlOption,
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Publish outbox rows to the broker with confirms, deleting each once confirmed.

    Any number of replicas may run at once."""
    from bus.outbox.relay import serve

    s = settings(url, topology, outbox_url=outbox_url)
    t = topology_of(s)
    run_service(
        serve(
            s.url,
            s.outbox_url,
            t,
            metrics_port=metrics_port,
            grace=grace,
            batch=batch,
            reconnect_interval=s.reconnect_interval,
        )
    )


async def _status(url: str) -> Status:
    outbox = await open_outbox(url)
    try:
        return await outbox.status()
    finally:
        await outbox.close()


def _where(url: str) -> str:
    from bus.settings import redact

    return redact(url)
