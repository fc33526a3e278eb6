"""The `bus` command line. Errors are one clear line (a traceback only with `--debug`).

Exit codes: 0 success, 1 runtime failure, 2 usage or validation error.
"""

from __future__ import annotations

import sys

import typer

from bus.cli import demo, dlq, export, ops, outbox, run, scheduler, topology, ui
from bus.cli.common import state
from bus.errors import BusError

app = typer.Typer(
    help="An event bus over RabbitMQ: topology, publishing, subscribers, retries and the DLQ.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(topology.app, name="topology")
app.add_typer(dlq.app, name="dlq")
run.register(app)
ops.register(app)
for _module in (export, demo, scheduler, outbox, ui):
    _module.register(app, topology.app)


@app.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    log_format: str = typer.Option(
        "text", "--log-format", help="text or json", envvar="BUS_LOG_FORMAT"
    ),
    log_level: str = typer.Option("INFO", "--log-level", envvar="BUS_LOG_LEVEL"),
) -> None:
    from bus.logs import configure

    state.debug = debug
    configure(log_format, log_level)


def main() -> None:
    """Entry point: usage errors are click's (exit 2); our own errors are one line."""
    try:
        app()  # standalone: click reports usage errors itself, with exit code 2
    except BusError as exc:
        if state.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
