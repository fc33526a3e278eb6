"""SIGTERM and SIGINT as a stop request: how every long-running command ends cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals(stop: asyncio.Event | None = None) -> asyncio.Event:
    """Set *stop* (a new event if None) on SIGTERM or SIGINT, and return it. Where the loop
    cannot take signal handlers (not the main thread, or Windows), nothing is installed: the
    caller's own *stop* still works."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    return stop
