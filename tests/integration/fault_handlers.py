"""Handlers for subscriber processes that crash on purpose (run by `bus run` in subprocesses).

State lives in files under `$FAULT_DIR`, so it survives the process being killed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bus import Context, Router
from bus.amqp.delivery import Delivery
from bus.consume.handoff import HandOff


def _dir() -> Path:
    return Path(os.environ["FAULT_DIR"])


def _once(name: str) -> bool:
    """True the first time *name* is asked for, across processes."""
    try:
        (_dir() / name).touch(exist_ok=False)
        return True
    except FileExistsError:
        return False


def _effect(ctx: Context) -> None:
    with (_dir() / "effects").open("a") as f:
        f.write(f"{ctx.id} {ctx.attempt} {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())


# -- crash between the retry republish (confirmed) and the ack of the original --------------
# Run by `python -m tests.integration.fault_handlers svc`: `bus run` with a hand-off that kills
# the process right after its first confirmed republish.

crash_after_handoff = Router()


class DiesAfterHandOff(HandOff):
    async def republish(self, m: Delivery, queue: str, headers: dict[str, Any]) -> None:
        await super().republish(m, queue, headers)
        if _once("crashed"):
            os._exit(137)  # like SIGKILL: no ack, no clean close


@crash_after_handoff.on("order.placed")
async def fails_once_then_records(event: dict[str, Any], ctx: Context) -> None:
    if _once("failed"):
        raise ConnectionError("warehouse down")
    _effect(ctx)


# -- a handler that kills its process every time ---------------------------------------------

always_exit = Router()


@always_exit.on("order.placed")
async def dies(event: dict[str, Any], ctx: Context) -> None:
    with (_dir() / "deliveries").open("a") as f:
        f.write(f"{ctx.id}\n")
    os._exit(1)


# -- a slow handler, for SIGTERM drain and SIGKILL mid-handler tests -------------------------

slow = Router()


@slow.on("order.placed")
async def takes_a_while(event: dict[str, Any], ctx: Context) -> None:
    import asyncio

    await asyncio.sleep(float(os.environ.get("FAULT_HANDLER_SECONDS", "0.5")))
    _effect(ctx)


# -- a handler that says when it starts, for recovery after SIGKILL ---------------------------

marks_start = Router()


@marks_start.on("order.placed")
async def starts_then_works(event: dict[str, Any], ctx: Context) -> None:
    import asyncio

    with (_dir() / "started").open("a") as f:
        f.write(f"{ctx.id} {os.getpid()}\n")
    await asyncio.sleep(float(os.environ.get("FAULT_HANDLER_SECONDS", "0.5")))
    _effect(ctx)


# -- an effect recorded idempotently by event id, in the same transaction as its run count ----

idempotent_effect = Router()


@idempotent_effect.on("order.placed")
async def record_once(event: dict[str, Any], ctx: Context) -> None:
    """The classic recipe downstream: the event id is the operation id of the effect itself.

    `runs` counts executions (a process killed after the effect but before the bus recorded the
    event as processed runs the handler again); the effect row exists once per event."""
    import asyncio
    import sqlite3

    await asyncio.sleep(float(os.environ.get("FAULT_HANDLER_SECONDS", "0.02")))
    with sqlite3.connect(_dir() / "effects.db", timeout=30) as db:
        db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT PRIMARY KEY, runs INT)")
        db.execute(
            "INSERT INTO effects (id, runs) VALUES (?, 1) "
            "ON CONFLICT (id) DO UPDATE SET runs = runs + 1",
            (ctx.id,),
        )


if __name__ == "__main__":  # a subscriber whose hand-off crashes once (see DiesAfterHandOff)
    import asyncio
    import sys

    from bus.consume.service import serve
    from bus.settings import Settings

    asyncio.run(serve(sys.argv[1], Settings.from_env(), grace=10, handoff=DiesAfterHandOff))
