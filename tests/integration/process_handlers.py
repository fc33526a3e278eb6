"""Handlers for `bus run --processes N` tests: each records, in files under `$FAULT_DIR`, which
process started and which finished handling each event (files survive a killed process)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from bus import Context, Router

records = Router()


def _append(name: str, line: str) -> None:
    with (Path(os.environ["FAULT_DIR"]) / name).open("a") as f:
        f.write(line + "\n")


@records.on("order.placed")
async def record(event: dict[str, Any], ctx: Context) -> None:
    _append("started", f"{ctx.id} {os.getpid()}")
    await asyncio.sleep(float(os.environ.get("HANDLER_SECONDS", "0")))
    _append("effects", f"{ctx.id} {os.getpid()}")
