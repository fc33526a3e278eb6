"""Call the warehouse webhook (`WAREHOUSE_URL`) and publish `shipment.requested`.

A 5xx, a timeout or a refused connection raises, so the retry ladder tries again later; a 4xx
(other than 408/429) means the warehouse will never accept this order: park it (`Reject`).
"""

from __future__ import annotations

import os

import httpx
from pydantic import BaseModel, Field

from bus import Context, Reject, Router

router = Router()


class Item(BaseModel):
    sku: str
    quantity: int = Field(ge=1)


class OrderPlaced(BaseModel):
    order_id: str
    items: list[Item] = Field(default_factory=list)


@router.on("order.placed")
async def request_shipment(order: OrderPlaced, ctx: Context) -> None:
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
    ctx.log.info("shipment of %s requested (warehouse ref %s)", order.order_id, reference)


def _reference(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    ref = body.get("reference") if isinstance(body, dict) else None
    return str(ref) if ref is not None else None
