"""The demo's stand-in payment provider, a subscriber of the demo's topology (`bus run payments`):
it answers each `payment.refund_requested` with `payment.refunded`, except the refunds named in
`PAYMENTS_SILENT` (comma-separated refund ids), which it leaves unanswered so the refund saga's
timeout runs its compensation."""

from __future__ import annotations

import os

from pydantic import BaseModel

from bus import Context, Router

router = Router()


class RefundRequested(BaseModel):
    refund_id: str
    order_id: str = ""
    amount: float = 0.0


def silent() -> set[str]:
    return {r.strip() for r in os.environ.get("PAYMENTS_SILENT", "").split(",") if r.strip()}


@router.on("payment.refund_requested")
async def pay_back(event: RefundRequested, ctx: Context) -> None:
    if event.refund_id in silent():
        ctx.log.info("refund %s: no answer (the provider is silent)", event.refund_id)
        return
    await ctx.publish(
        "payment.refunded",
        {"refund_id": event.refund_id, "order_id": event.order_id, "amount": event.amount},
    )
