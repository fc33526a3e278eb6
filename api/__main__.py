"""`python -m api [--host H] [--port P]`: the orders API on uvicorn.

Defaults from `API_HOST` (127.0.0.1) and `API_PORT` (8000); the database is `BUS_OUTBOX_URL`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import uvicorn
from pydantic import ValidationError

from api.orders import create_app
from api.settings import ApiSettings
from bus.errors import BusError
from bus.logs import configure

# On SIGTERM in-flight requests finish within this; then the subscriber drains (BUS_GRACE_PERIOD).
HTTP_DRAIN_SECONDS = 5


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    parser.add_argument("--host", help="address to bind (API_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (API_PORT, default 8000)")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    # a long-lived server freezes its start-up objects (as `bus run`), unless API_GC_FREEZE=0
    freeze = None if "API_GC_FREEZE" in os.environ else True
    try:
        settings = ApiSettings.from_env(host=args.host, port=args.port, gc_freeze=freeze)
        configure(settings.bus.log_format, settings.bus.log_level)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            print(f"error: {where}: {error['msg']}", file=sys.stderr)
        sys.exit(2)
    except BusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    for sig in (signal.SIGTERM, signal.SIGINT):
        # uvicorn shuts down gracefully, then re-raises the signal to the handler it found:
        # this one makes that a clean exit 0, as `bus run` gives
        signal.signal(sig, _exit_cleanly)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=args.access_log,
        log_config=None,  # keep the bus's log format (BUS_LOG_FORMAT)
        timeout_graceful_shutdown=HTTP_DRAIN_SECONDS,
    )


def _exit_cleanly(_signum: int, _frame: object) -> None:
    sys.exit(0)


if __name__ == "__main__":
    main()
