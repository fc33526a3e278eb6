"""The `bus` command line. Errors are one clear line (a traceback only with `--debug`).

Exit codes: 0 success, 1 runtime failure, 2 usage or validation error.
"""

from __future__ import annotations

import typer

from bus.cli import (
    demo,
    dlq,
    entry,
    export,
    history,
    ops,
    outbox,
    run,
    saga,
    scheduler,
    topology,
    ui,
)
from bus.cli.common import state, version_option

app = typer.Typer(
    help="An event bus over RabbitMQ: topology, publishing, subscribers, retries and the DLQ.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
app.add_typer(topology.app, name="topology")
app.add_typer(dlq.app, name="dlq")
run.register(app)
ops.register(app)
for _module in (export, demo, scheduler, outbox, ui, history, saga):
    _module.register(app, topology.app)


@app.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (also after a command)."),
    log_format: str = typer.Option(
        "text", "--log-format", help="text or json", envvar="BUS_LOG_FORMAT"
    ),
    log_level: str = typer.Option(
        "INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR", envvar="BUS_LOG_LEVEL"
    ),
    _version: bool = version_option,
) -> None:
    from bus.logs import configure

    state.debug = state.debug or debug
    configure(log_format, log_level)


def main() -> None:
    """Entry point: every failure one line (bus.cli.entry)."""
    entry.run(app)
