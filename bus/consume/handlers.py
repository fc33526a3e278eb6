"""Import a subscriber's handlers (`module:attribute` of a `bus.Router`), failing in one line.

`bus run` imports the one it serves; `bus topology validate` imports every subscriber's, so a
handlers module that does not import is reported before anything is deployed.
"""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig
import traceback

from bus.consume.router import Router
from bus.errors import ConfigError
from bus.topology.model import Topology


def import_router(spec: str) -> Router:
    """The `Router` named by ``module:attribute``; ConfigError in one line when it is not one.

    The working directory is importable, as with `python -m`: a service's own package need not
    be installed."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # SyntaxError, NameError, ImportError...: whatever the code raises
        raise ConfigError(f"cannot import {spec}: {_where(exc)}") from None
    router = getattr(module, attr, None)
    if router is None:
        raise ConfigError(f"cannot import {spec}: module {module_name!r} has no {attr!r}")
    if not isinstance(router, Router):
        raise ConfigError(f"{spec} is a {type(router).__name__}, not a bus.Router")
    return router


def import_problems(topology: Topology) -> list[str]:
    """Every subscriber whose handlers do not import, as "subscribers.NAME.handlers: why"."""
    problems = []
    for name in topology.subscriber_names:
        spec = topology.spec.subscribers[name].handlers
        try:
            import_router(spec)
        except ConfigError as exc:
            problems.append(f"subscribers.{name}.handlers: {exc}")
    return problems


_LIBRARIES = tuple(
    {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
)


def _library(filename: str) -> bool:
    """Python's own or an installed package's file: the user's code is the last frame that
    is neither."""
    return filename.startswith(_LIBRARIES) or filename.startswith("<frozen")


def _where(exc: BaseException) -> str:
    """The exception in one line, with the file and line where the user's code failed."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _library(f.filename)]
    if frames and not isinstance(exc, ModuleNotFoundError):
        return f"{text} ({frames[-1].filename}, line {frames[-1].lineno})"
    return text
