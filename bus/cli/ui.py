"""`bus ui [--host H] [--port N]`: the operator's web page."""

from __future__ import annotations

import logging
import signal
import sys

import typer

from bus.cli.common import TopologyOption, UrlOption, settings
from bus.cli.outbox import OutboxUrlOption
from bus.extras import require
from bus.loop import chosen
from bus.loop import run as run_service

log = logging.getLogger(__name__)


def register(app: typer.Typer, _topology_app: typer.Typer) -> None:
    app.command("ui")(ui)


def ui(
    port: int = typer.Option(8080, "--port", envvar="BUS_UI_PORT", help="Port to listen on."),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        envvar="BUS_UI_HOST",
        help="Address to bind; anything but loopback needs BUS_UI_TOKEN.",
    ),
    outbox_url: str | None = OutboxUrlOption,
    topology: str | None = TopologyOption,
    url: str | None = UrlOption,
) -> None:
    """Serve the operator's web page: status, DLQs with their failures, replay, outbox, schedules.

    Read-only unless BUS_UI_TOKEN is set; replays and purges then need the token (Bearer for
    the JSON API, a login for the pages)."""
    for module in ("fastapi", "uvicorn", "jinja2", "multipart"):
        require(module, "ui", "bus ui")
    import uvicorn

    from bus.ui import UiConfig, check_bind, create_app

    config = UiConfig.from_env(settings(url, topology, outbox_url=outbox_url))
    check_bind(host, config)
    app = create_app(config)
    mode = "read-only (no BUS_UI_TOKEN)" if config.read_only else "token required for changes"
    log.info("bus ui on http://%s:%d/ (%s, %s loop)", host, port, mode, chosen())
    for sig in (signal.SIGTERM, signal.SIGINT):
        # uvicorn shuts down gracefully, then re-raises the signal to the handler it found:
        # this one makes that a clean exit 0, as `bus run` and the orders API give
        signal.signal(sig, _exit_cleanly)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False,
            timeout_graceful_shutdown=5,
        )
    )  # fmt: skip
    run_service(server.serve())


def _exit_cleanly(_signum: int, _frame: object) -> None:
    sys.exit(0)
