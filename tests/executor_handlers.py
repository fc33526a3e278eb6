"""Handlers for the executor tests: module-level, so a worker process can import them."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from pydantic import BaseModel

from bus import ProcessContext, Reject, Router, SyncContext

router = Router()


class Job(BaseModel):
    job_id: str
    seconds: float = 0.0


@router.on("job.cpu", executor="process")
def crunch(job: Job, ctx: ProcessContext) -> None:
    """Busy for `seconds` of CPU, then a follow-up naming the process it ran in."""
    deadline = time.monotonic() + job.seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    if job.job_id.startswith("reject"):
        raise Reject("not this one")
    if job.job_id.startswith("fail") and ctx.attempt == 1:
        raise ValueError(f"attempt {ctx.attempt} of {job.job_id} failed in a process")
    ctx.publish("job.done", {"job_id": job.job_id, "pid": os.getpid(), "attempt": ctx.attempt})


@router.on("job.blocking")
def block(job: Job, ctx: SyncContext) -> None:
    """A blocking library call: sleeps in its thread, then a follow-up naming the thread."""
    time.sleep(job.seconds)
    ctx.publish("job.done", {"job_id": job.job_id, "thread": threading.current_thread().name})


@router.on("job.exit", executor="process")
def die(job: dict[str, Any], ctx: ProcessContext) -> None:
    """The worker dies under the handler on its first attempt."""
    if ctx.attempt == 1:
        os._exit(3)


@router.on("job.size", executor="process")
def measure(job: dict[str, Any], ctx: ProcessContext) -> None:
    """Nothing but reading the event (a large one crosses the pipe in many writes)."""
    assert len(job["blob"]) > 0
