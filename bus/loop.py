"""The event loop a long-running command runs on: uvloop when it is installed, asyncio otherwise.

`bus run`, `bus relay`, `bus scheduler` and `bus ui` start through `run`. `BUS_LOOP` chooses:
`auto` (the default: uvloop if the `speed` extra installed it), `asyncio`, or `uvloop` (which
then must be installed: one line naming the extra otherwise). Each command's start line in the
log names the loop it runs on (`name_of`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from bus.errors import ConfigError
from bus.extras import require

T = TypeVar("T")

CHOICES = ("auto", "asyncio", "uvloop")


def choose(setting: str, uvloop_installed: bool) -> str:
    """The loop *setting* (a `BUS_LOOP` value) asks for: `asyncio` or `uvloop`."""
    value = setting.strip().lower() or "auto"
    if value not in CHOICES:
        raise ConfigError(f"BUS_LOOP {setting!r}: use auto, asyncio or uvloop")
    if value == "auto":
        return "uvloop" if uvloop_installed else "asyncio"
    return value


def chosen(environ: dict[str, str] | None = None) -> str:
    """The loop this process's `BUS_LOOP` asks for (ConfigError if it is not a choice)."""
    env = os.environ if environ is None else environ
    return choose(env.get("BUS_LOOP", "auto"), importlib.util.find_spec("uvloop") is not None)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run *coro* to completion on the loop `BUS_LOOP` chooses, as `asyncio.run` does."""
    try:
        name = chosen()
    except BaseException:
        coro.close()  # never awaited: say nothing about it
        raise
    if name == "asyncio":
        return asyncio.run(coro)
    try:
        uvloop = require("uvloop", "speed", "BUS_LOOP=uvloop")
    except BaseException:
        coro.close()
        raise
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def name_of(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """`uvloop` or `asyncio`: the loop *loop* (default: the running one) is."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.split(".", 1)[0] == "uvloop" else "asyncio"
