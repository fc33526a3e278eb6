"""A refund saga for the saga tests: counted effects, a timeout, a compensation path."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel

from bus import Router, Saga, SagaContext


class RefundState(BaseModel):
    amount: int = 0
    status: str = "new"
    count: int = 0


class Requested(BaseModel):
    refund_id: str
    amount: int = 0


refund = Saga("refund", state=RefundState, key="refund_id")
router = Router()
router.include_saga(refund)

TIMEOUT = os.environ.get("SAGA_TIMEOUT", "3d")


@refund.start("refund.requested")
async def requested(event: Requested, state: RefundState, ctx: SagaContext) -> None:
    state.amount = event.amount
    state.status = "waiting"
    await ctx.publish("payment.refund_requested", {"refund_id": ctx.key, "amount": event.amount})
    await ctx.timeout("refund.expired", after=TIMEOUT)
    _crash_point("after-step")


@refund.on("payment.refunded")
async def refunded(event: dict[str, Any], state: RefundState, ctx: SagaContext) -> None:
    state.status = "done"
    await ctx.publish("refund.completed", {"refund_id": ctx.key, "amount": state.amount})
    ctx.complete()


@refund.on("refund.expired")
async def expired(event: dict[str, Any], state: RefundState, ctx: SagaContext) -> None:
    state.status = "expired"
    await ctx.publish("refund.failed", {"refund_id": ctx.key, "reason": "no refund in time"})
    ctx.complete()


@refund.on("refund.counted")
async def counted(event: dict[str, Any], state: RefundState, ctx: SagaContext) -> None:
    state.count += 1


def _crash_point(name: str) -> None:
    """SAGA_CRASH=<name>: die here (SIGKILL) once, marked by a file in FAULT_DIR."""
    if os.environ.get("SAGA_CRASH") != name:
        return
    mark = os.path.join(os.environ["FAULT_DIR"], f"crashed-{name}")
    if os.path.exists(mark):
        return
    with open(mark, "w") as f:
        f.write("1")
    os.kill(os.getpid(), 9)
