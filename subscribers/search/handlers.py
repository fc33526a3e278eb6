"""Index each order (`order.placed`) and mark cancellations (`order.cancelled`).

Declared with `backfill: 7d`: when `bus topology apply` first creates its queue, the last week of
orders is copied into it from the `events` history, so the index starts complete. A copy carries
the `bus-replayed-at` header; the index notes where each order first came from.
"""

from __future__ import annotations

from pydantic import BaseModel

from bus import Context, Router
from subscribers.search.index import close_all, index

router = Router()
router.on_shutdown(close_all)


class OrderPlaced(BaseModel):
    order_id: str
    customer: str = ""
    email: str = ""
    total: float | None = None


class OrderCancelled(BaseModel):
    order_id: str


def via(ctx: Context) -> str:
    return "history" if "bus-replayed-at" in (ctx.headers or {}) else "live"


@router.on("order.placed")
async def index_order(order: OrderPlaced, ctx: Context) -> None:
    db = await index()
    await db.placed(order.order_id, order.customer, order.email, order.total, via(ctx))


@router.on("order.cancelled")
async def mark_cancelled(event: OrderCancelled, ctx: Context) -> None:
    await (await index()).cancelled(event.order_id, via(ctx))
