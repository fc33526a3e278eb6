"""The refund flow, as a saga: one instance per `refund_id`, its state in the store.

refund.requested -> asks payments (payment.refund_requested) and sets a timeout;
payment.refunded -> done (refund.completed); the timeout first -> compensation
(refund.failed: the customer is told, support takes over). A payment.refunded that comes
after the timeout finds the instance completed and is ignored.

`REFUND_TIMEOUT` (default 3d) scales the timeout down for the demo.
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from bus import Router, Saga, SagaContext


class Refund(BaseModel):
    order_id: str = ""
    amount: float = 0.0
    status: str = "new"  # new -> requested -> refunded | expired


class RefundRequested(BaseModel):
    refund_id: str
    order_id: str
    amount: float


class PaymentRefunded(BaseModel):
    refund_id: str


class RefundExpired(BaseModel):
    refund_id: str


refund = Saga("refund", state=Refund, key="refund_id")
router = Router()
router.include_saga(refund)


@refund.start("refund.requested")
async def requested(event: RefundRequested, state: Refund, ctx: SagaContext) -> None:
    state.order_id, state.amount, state.status = event.order_id, event.amount, "requested"
    await ctx.publish(
        "payment.refund_requested",
        {"refund_id": ctx.key, "order_id": event.order_id, "amount": event.amount},
    )
    await ctx.timeout("refund.expired", after=os.environ.get("REFUND_TIMEOUT", "3d"))


@refund.on("payment.refunded")
async def refunded(event: PaymentRefunded, state: Refund, ctx: SagaContext) -> None:
    state.status = "refunded"
    await ctx.publish("refund.completed", {"refund_id": ctx.key, "order_id": state.order_id})
    ctx.complete()


@refund.on("refund.expired")
async def expired(event: RefundExpired, state: Refund, ctx: SagaContext) -> None:
    state.status = "expired"  # compensation: tell the customer, hand it to support
    await ctx.publish(
        "refund.failed",
        {"refund_id": ctx.key, "order_id": state.order_id, "reason": "no refund from payments"},
    )
    ctx.complete()
