"""`bus demo`: the whole flow on this machine, live (plain periodic lines without a TTY)."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import re
import signal
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bus.cli.common import TopologyOption, UrlOption, console, err, run_async, settings
from bus.durations import normalise
from bus.errors import ConfigError
from bus.extras import require

if TYPE_CHECKING:
    from demo.flow import Demo, Outcome, Snapshot

PLAIN_EVERY = 2.0  # seconds between progress lines without a TTY
CHATTY = ("mail.log", "httpx", "httpcore", "bus.topology.apply")  # per-request, per-object INFO
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def register(app: typer.Typer, topology_app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    orders: int = typer.Option(50, "--orders", min=1, help="How many orders to publish."),
    rate: str = typer.Option("20/s", "--rate", help="Orders per second, e.g. 20 or 20/s."),
    delays: str = typer.Option("1s,2s,4s", "--delays", help="The demo's retry ladder."),
    timeout: float = typer.Option(45.0, "--timeout", min=1, help="Seconds for the flow."),
    flaky: int = typer.Option(3, "--flaky", min=0, help="The warehouse fails this many calls."),
    keep: bool = typer.Option(False, "--keep", help="Keep the demo queues and exchange."),
    kill_relay: bool = typer.Option(
        False, "--kill-relay", help="SIGKILL the relay half way (a new one takes over)."
    ),
    prefix: str | None = typer.Option(
        None,
        "--prefix",
        help="Name prefix of the demo's queues and exchange, deleted at start and end "
        "(default: demo-XXXXXX, new each run, so two people on one broker never collide)",
        show_default=False,
    ),
    plain: bool = typer.Option(False, "--plain", help="Progress lines instead of a live view."),
    json_summary: bool = typer.Option(
        False, "--json-summary", help="End with one line `demo: {json}`."
    ),
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Run the whole flow here, from a checkout of the repository: the topology under a fresh
    prefix with short retries, an SMTP sink, a flaky warehouse, the services, the orders API and
    a relay, orders POSTed to the API; exit 1 if any is lost."""
    prefix = prefix if prefix is not None else run_prefix()
    if not _PREFIX.match(prefix):
        raise ConfigError(f"--prefix {prefix!r}: use letters, digits, '-' and '_'")
    s = settings(url, topology)
    flow = _demo_flow()
    options = flow.DemoOptions(
        orders=orders, rate=_rate(rate), delays=_delays(delays), timeout=timeout,
        keep=keep, flaky=flaky, prefix=prefix, workdir=Path(".bus") / prefix,
        kill_relay=kill_relay,
    )  # fmt: skip
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    live = not plain and console.is_terminal
    view = _LiveView() if live else _PlainView()
    runner = flow.Demo(options, url=s.url, topology=s.topology, say=view.say, on_tick=view.tick)
    try:
        with view:
            outcome = run_async(_until_sigterm(runner))
    except asyncio.CancelledError:
        err.print("demo: stopped by SIGTERM (services stopped, demo queues removed)")
        raise typer.Exit(143) from None
    _summary(outcome)
    if json_summary:
        print("demo: " + json.dumps(outcome.as_dict(), separators=(",", ":")))
    if not outcome.ok:
        raise typer.Exit(1)


async def _until_sigterm(runner: Demo) -> Outcome:
    """Run the demo; SIGTERM (a cancelled CI job) cleans up like Ctrl-C does."""
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await runner.run()


def _demo_flow() -> ModuleType:
    """`demo.flow` of the checkout this command runs in (or below), or was installed from
    (editable): the demo is the repository's, not installed with the library."""
    import bus

    here = Path.cwd()
    places = (here, *here.parents, Path(bus.__file__).resolve().parents[1])
    checkout = next((p for p in places if (p / "demo" / "flow.py").is_file()), None)
    if checkout is None:
        raise ConfigError(
            "bus demo runs from a checkout of the bus repository (its demo/ folder is not "
            "installed with the library): cd into the checkout and run it there"
        )
    for module in ("fastapi", "uvicorn", "sqlalchemy", "aiosmtplib", "aiosmtpd", "httpx", "fpdf"):
        require(module, "examples", "bus demo")  # the services, the orders API and the stubs
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))  # before site-packages: this checkout's demo
    return importlib.import_module("demo.flow")


def run_prefix() -> str:
    """A prefix of its own for each run: `demo-` and six random hex digits."""
    import secrets

    return f"demo-{secrets.token_hex(3)}"


def _rate(text: str) -> float:
    try:
        value = float(text.strip().removesuffix("/s"))
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ConfigError(f"--rate {text!r}: give orders per second, e.g. 20 or 20/s")
    return value


def _delays(text: str) -> tuple[str, ...]:
    try:
        return tuple(normalise(d) for d in text.split(",") if d.strip())
    except ValueError as exc:
        raise ConfigError(f"--delays: {exc}") from None


class _PlainView:
    """One line per step and one progress line every few seconds: for CI logs."""

    def __init__(self) -> None:
        self._last = 0.0

    def __enter__(self) -> _PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def say(self, line: str) -> None:
        console.print(f"demo: {line}", markup=False, soft_wrap=True)

    def tick(self, snap: Snapshot) -> None:
        now = time.monotonic()
        if now - self._last < PLAIN_EVERY:
            return
        self._last = now
        subs = " | ".join(
            f"{v.name} {v.handled}/{v.expected}"
            + (f" retried {v.retried}" if v.retried else "")
            + (f" parked {v.parked}" if v.parked else "")
            for v in snap.subscribers
        )
        line = (
            f"[{snap.elapsed:5.1f}s] accepted {snap.published}/{snap.orders} | {_outbox(snap)} "
            f"| {subs} | mails {snap.mails} | warehouse {_calls(snap)} | {_sagas(snap)}"
        )
        console.print(line, markup=False, soft_wrap=True)


class _LiveView(_PlainView):
    """A rich Live table, refreshed on every snapshot."""

    def __init__(self) -> None:
        super().__init__()
        self._live = Live(Text("starting…"), console=console, refresh_per_second=8, transient=True)

    def __enter__(self) -> _LiveView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def say(self, line: str) -> None:
        self._live.console.print(f"demo: {line}", markup=False)

    def tick(self, snap: Snapshot) -> None:
        head = Text.assemble(
            ("orders accepted ", "dim"), f"{snap.published}/{snap.orders}",
            ("   ", ""), _outbox(snap),
            ("   mails delivered ", "dim"), str(snap.mails),
            ("   warehouse ", "dim"), _calls(snap),
            ("   ", ""), _sagas(snap),
            ("   ", ""), (f"{snap.elapsed:.1f}s", "dim"),
        )  # fmt: skip
        self._live.update(Group(head, _table(snap, live=True)))


def _outbox(snap: Snapshot) -> str:
    lag = f", oldest {snap.outbox_lag:.1f}s" if snap.outbox_pending else ""
    return f"relayed {snap.relayed} (outbox {snap.outbox_pending}{lag})"


def _sagas(snap: Snapshot) -> str:
    r = snap.refunds
    return f"refund sagas: {r.completed} completed, {r.failed} failed, {r.running} running"


def _calls(snap: Snapshot) -> str:
    w = snap.warehouse
    return f"{w.calls} calls ({w.failed} x 503, {w.accepted} x 201)"


def _table(snap: Snapshot, *, live: bool) -> Table:
    table = Table(box=None, pad_edge=False)
    table.add_column("subscriber")
    table.add_column("handled", justify="right")
    table.add_column("retried", justify="right")
    if live:
        table.add_column("in retry now", justify="right")
        table.add_column("waiting", justify="right")
    else:
        table.add_column("duplicates", justify="right")
    table.add_column("parked", justify="right")
    for v in snap.subscribers:
        style = "green" if v.settled and not v.parked else ("red" if v.parked else "")
        extra = [str(v.retrying), str(v.waiting)] if live else [str(v.duplicates)]
        table.add_row(
            v.name, Text(f"{v.handled}/{v.expected}", style=style), str(v.retried),
            *extra, Text(str(v.parked), style="red" if v.parked else ""),
        )  # fmt: skip
    return table


def _flows(outcome: Outcome) -> None:
    """The lines of the ordered, history and saga flows, each from what its service recorded."""
    snap = outcome.snapshot
    o, s, r = snap.ordering, snap.search, snap.refunds
    if o.cancelled:
        held = (
            f", {o.held} of them held while their order.placed waited for a retry" if o.held else ""
        )
        console.print(
            f"ordered fulfillment: {o.cancelled} orders cancelled right behind their order.placed; "
            f"fulfillment handled {o.in_order} cancellations after their order{held} · "
            f"overtaken: {max(o.overtaken, o.metric)}",
            soft_wrap=True, markup=False,
        )  # fmt: skip
    if s is not None and s.added:
        console.print(
            f"search (added after {s.added_after} orders, backfill from history): "
            f"{s.backfilled} events copied into its new queue by `bus topology apply`; "
            f"its index holds {s.indexed}/{snap.orders} orders ({s.from_history} first seen "
            f"in history, {s.indexed - s.from_history} live; {s.cancelled} cancelled)",
            soft_wrap=True, markup=False,
        )  # fmt: skip
    if r.requested:
        console.print(
            f"refunds (a saga): {r.requested} requested, {r.completed} completed "
            f"(payment.refunded), {r.failed} failed after the timeout ({outcome.refund_timeout} "
            "here, 3d in production): refund.failed, the compensation",
            soft_wrap=True, markup=False,
        )  # fmt: skip


def _summary(outcome: Outcome) -> None:
    snap, t = outcome.snapshot, outcome.timings
    console.print()
    console.print(_table(snap, live=False))
    w = snap.warehouse
    console.print(
        f"orders accepted {snap.published}/{snap.orders} · mails delivered {snap.mails} · "
        f"warehouse {_calls(snap)}: {w.recovered} orders accepted after a 503 and a retry",
        soft_wrap=True,
    )
    a = outcome.api
    if a:
        killed = f", relay SIGKILLed {outcome.relay_kills}x" if outcome.relay_kills else ""
        console.print(
            f"orders API: POST /orders p50 {a['p50_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms "
            f"(the first, cold: {a['first_ms']:.0f} ms) · "
            f"outbox: {snap.relayed} relayed, lag max {outcome.max_outbox_lag:.1f}s{killed}",
            soft_wrap=True,
            markup=False,
        )
    if snap.invoices:
        sample = snap.invoices[0]
        console.print(
            f"invoices: {len(snap.invoices)} PDFs rendered in invoicing's process pool, e.g. "
            f"{sample} ({sample.stat().st_size:,} bytes) · follow-ups: {snap.follow_ups} "
            '"How was your order?" mails, each a delayed event (3d in production, '
            f"{outcome.follow_up} here)",
            soft_wrap=True,
            markup=False,
        )
    _flows(outcome)
    steps = ("startup", "flow", "shutdown", "total")
    console.print("timings: " + ", ".join(f"{k} {t[k]:.1f}s" for k in steps if k in t))
    if outcome.ok:
        names = ", ".join(v.name for v in snap.subscribers)
        console.print(f"[green]demo: ok[/] — {snap.orders} orders handled by {names}")
        return
    err.print("[red]demo: FAILED[/]")
    for problem in outcome.problems:
        err.print(f"  {problem}", markup=False, soft_wrap=True)
    err.print("  (run again with --keep to inspect the demo queues, e.g. with `bus dlq list`)")
