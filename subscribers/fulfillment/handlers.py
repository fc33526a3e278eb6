"""Call the warehouse webhook (`WAREHOUSE_URL`) and publish `shipment.requested`; note
cancellations. Every event handled is recorded in the ledger (`subscribers.fulfillment.ledger`).

A 5xx, a timeout or a refused connection raises, so the retry ladder tries again later; a 4xx
(other than 408/429) means the warehouse will never accept this order: park it (`Reject`).

The subscriber is `ordered: true` by `order_id`: an order's `order.cancelled` runs after its
`order.placed` has been handled, even when that one is still waiting for a retry. Were it
otherwise, the ledger would count it (`overtaken`) and the order would not be shipped.
"""

from __future__ import annotations

import os

import httpx
from pydantic import BaseModel, Field

from bus import Context, Reject, Router
from subscribers.fulfillment.ledger import close_all, ledger

router = Router()
router.on_shutdown(close_all)


class Item(BaseModel):
    sku: str
    quantity: int = Field(ge=1)


class OrderPlaced(BaseModel):
    order_id: str
    items: list[Item] = Field(default_factory=list)


class OrderCancelled(BaseModel):
    order_id: str
    reason: str = ""


@router.on("order.placed")
async def request_shipment(order: OrderPlaced, ctx: Context) -> None:
    book = await ledger()
    if await book.seen(order.order_id, "order.cancelled"):  # overtaken: never ship it
        await book.record(ctx.id, order.order_id, ctx.type, ctx.attempt, overtook=True)
        ctx.log.warning("order %s was cancelled before it was placed: not shipped", order.order_id)
        return
    url = os.environ.get("WAREHOUSE_URL", "http://localhost:8081/orders")
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            url,
            json={"order_id": order.order_id, "items": [i.model_dump() for i in order.items]},
            # the warehouse may dedupe on it: the same order never ships twice
            headers={"Idempotency-Key": ctx.id, "X-Correlation-Id": ctx.correlation_id},
        )
    if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
        raise Reject(f"warehouse refused order {order.order_id}: HTTP {response.status_code}")
    response.raise_for_status()
    reference = _reference(response)
    await ctx.publish(
        "shipment.requested", {"order_id": order.order_id, "warehouse_ref": reference}
    )
    await book.record(ctx.id, order.order_id, ctx.type, ctx.attempt, overtook=False)
    ctx.log.info("shipment of %s requested (warehouse ref %s)", order.order_id, reference)


@router.on("order.cancelled")
async def cancel(event: OrderCancelled, ctx: Context) -> None:
    book = await ledger()
    placed = await book.seen(event.order_id, "order.placed")
    await book.record(ctx.id, event.order_id, ctx.type, ctx.attempt, overtook=not placed)
    if placed:
        ctx.log.info("order %s cancelled after its shipment was requested", event.order_id)
    else:
        ctx.log.warning("order %s cancelled before its order.placed was handled", event.order_id)


def _reference(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    ref = body.get("reference") if isinstance(body, dict) else None
    return str(ref) if ref is not None else None
