"""bus.signals: SIGTERM and SIGINT become a stop request."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from bus.signals import STOP_SIGNALS, stop_on_signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_signal_sets_the_stop_event(sig: signal.Signals) -> None:
    loop = asyncio.get_running_loop()
    try:
        stop = stop_on_signals()
        os.kill(os.getpid(), sig)
        await asyncio.wait_for(stop.wait(), 5)
    finally:
        for s in STOP_SIGNALS:
            loop.remove_signal_handler(s)


async def test_the_callers_event_is_the_one_set() -> None:
    loop = asyncio.get_running_loop()
    mine = asyncio.Event()
    try:
        assert stop_on_signals(mine) is mine
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(mine.wait(), 5)
    finally:
        for s in STOP_SIGNALS:
            loop.remove_signal_handler(s)
