"""The `orders` subscriber: records an order's progress that comes back over the bus.

Fulfillment publishes `shipment.requested` once the warehouse accepted an order; this handler
records it against the order (once: a redelivery changes nothing), so `GET /orders/{id}` shows
the loop API → bus → fulfillment → bus → API closed.

The API builds its router with `make_router(...)` around its own database. The module's
`router` (the topology's `handlers: api.progress:router`, for `bus run orders` and `bus.testing`)
opens the database of `BUS_OUTBOX_URL` on first use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from pydantic import BaseModel

from api.db import create_schema, open_engine
from api.repository import Orders
from api.schemas import State
from api.settings import SOURCE
from bus import Context, Outbox, Router
from bus.settings import Settings

OrdersSource = Callable[[], Awaitable[Orders]]


class ShipmentRequested(BaseModel):
    """What the API reads of fulfillment's `shipment.requested`."""

    order_id: str
    warehouse_ref: str | None = None


def make_router(orders: OrdersSource) -> Router:
    """The `orders` router, recording into the database *orders* returns."""
    router = Router()

    @router.on("shipment.requested", name="api.progress.shipment_requested")
    async def shipment_requested(event: ShipmentRequested, ctx: Context) -> None:
        book = await orders()
        ref = f"warehouse ref {event.warehouse_ref}" if event.warehouse_ref else None
        at = ctx.time or datetime.now(UTC)
        if await book.record(
            event.order_id, State.SHIPMENT_REQUESTED, at, event_id=ctx.id, detail=ref
        ):
            ctx.log.info("order %s: shipment requested", event.order_id)
        else:  # the exchange carries every producer's events: not an order of this API
            ctx.log.info("shipment.requested for unknown order %s: ignored", event.order_id)

    return router


_open: dict[str, Orders] = {}
_lock = asyncio.Lock()


async def _from_env() -> Orders:
    """The orders of `BUS_OUTBOX_URL`, opened (and its tables created) on first use."""
    url = Settings.from_env().outbox_url
    async with _lock:
        if url not in _open:
            engine = open_engine(url)
            await create_schema(engine)
            _open[url] = Orders(engine, Outbox.from_env(source=SOURCE))
        return _open[url]


router = make_router(_from_env)


@router.on_shutdown
async def _close() -> None:
    while _open:
        _, orders = _open.popitem()
        await orders.engine.dispose()
