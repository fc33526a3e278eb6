"""Orders in the database: place one with its event in one transaction, read it, record progress.

`place` writes the order, its lines and the `order.placed` outbox row in ONE transaction, so the
event exists exactly when the order does. An Idempotency-Key is a unique column: a retry finds
the first order; a concurrent retry loses the race on the unique index and then reads the
winner's order. Nothing here talks to the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.catalogue import Line, as_amount, price, total_cents
from api.db import dialect, order_items, order_progress, orders
from api.schemas import ItemOut, OrderIn, OrderOut, State, Step
from bus.outbox import Outbox
from bus.outbox.schema import TABLE as OUTBOX_TABLE
from bus.outbox.schema import Dialect

EVENT = "order.placed"
_EVENT_IDS = uuid.UUID("0f6d6c1e-5a4e-4d7b-9f0e-0de7a5000001")  # namespace of event ids


class KeyReused(Exception):
    """The Idempotency-Key already belongs to an order placed with a different body."""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        super().__init__(
            "this Idempotency-Key was already used with a different request body: "
            "send the same body to retry, or use a new key for a new order"
        )


@dataclass(frozen=True)
class Placed:
    """The order a POST answers with; `replayed` when an Idempotency-Key found an earlier one."""

    order_id: str
    replayed: bool = False


def event_id_of(order_id: str) -> str:
    """The id of an order's `order.placed` event: derived, so it is known from the order alone."""
    return str(uuid.uuid5(_EVENT_IDS, f"{EVENT}/{order_id}"))


def order_placed(order_id: str, order: OrderIn, lines: Sequence[Line]) -> dict[str, Any]:
    """The event's data, as topology/topology.yaml declares `order.placed`."""
    return {
        "order_id": order_id,
        "email": order.email,
        "customer": order.customer,
        "total": as_amount(total_cents(lines)),
        "items": [
            {"sku": line.sku, "quantity": line.quantity, "unit_price": as_amount(line.unit_cents)}
            for line in lines
        ],
    }


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite keeps no offset


class Orders:
    """The orders of one database, and the outbox their events go through."""

    def __init__(
        self,
        engine: AsyncEngine,
        outbox: Outbox,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.outbox = outbox
        self.clock = clock
        self._dialect = dialect(engine)
        # SQLite has one writer at a time: writers of this process take turns here, because
        # SQLite's own busy handler sleeps up to 100 ms between tries (a p99 of 100 ms)
        self._writing: contextlib.AbstractAsyncContextManager[object] = (
            asyncio.Lock() if self._dialect is Dialect.SQLITE else contextlib.nullcontext()
        )

    # -- POST /orders ------------------------------------------------------------------------

    async def place(self, order: OrderIn, key: str | None = None) -> Placed:
        """Store *order* and its event; with *key*, at most once. Raises KeyReused."""
        fingerprint = order.fingerprint()
        order_id = str(uuid.uuid4())
        try:  # no read first: a new key is the common case, and the unique index decides anyway
            async with self._writing, self.engine.begin() as conn:  # order, lines, event
                await self._write(conn, order_id, order, key, fingerprint)
        except IntegrityError:
            if key is None:
                raise
            async with self.engine.connect() as conn:  # a retry: the first order holds the key
                earlier = await self._by_key(conn, key)
            if earlier is None:
                raise
            return _replay(earlier, fingerprint)
        return Placed(order_id)

    async def _write(
        self, conn: AsyncConnection, order_id: str, order: OrderIn, key: str | None, digest: str
    ) -> None:
        lines = price((item.sku, item.quantity) for item in order.items)
        event_id = event_id_of(order_id)
        await conn.execute(
            insert(orders).values(
                id=order_id, idempotency_key=key, request_hash=digest, email=order.email,
                customer=order.customer, total_cents=total_cents(lines), event_id=event_id,
                created_at=self.clock(),
            )
        )  # fmt: skip
        await conn.execute(
            insert(order_items),
            [
                {"order_id": order_id, "line": n, "sku": line.sku, "quantity": line.quantity,
                 "unit_cents": line.unit_cents}
                for n, line in enumerate(lines, 1)
            ],
        )  # fmt: skip
        await self.outbox.add(
            conn, EVENT, order_placed(order_id, order, lines), id=event_id,
            correlation_id=order_id,  # the whole conversation follows the order's id
        )  # fmt: skip

    async def _by_key(self, conn: AsyncConnection, key: str) -> tuple[str, str] | None:
        """(order id, request fingerprint) of the order placed with *key*."""
        query = select(orders.c.id, orders.c.request_hash).where(orders.c.idempotency_key == key)
        row = (await conn.execute(query)).first()
        return (row.id, row.request_hash) if row is not None else None

    # -- GET /orders/{id} --------------------------------------------------------------------

    async def get(self, order_id: str) -> OrderOut | None:
        """The order and the states it reached, or None."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(orders).where(orders.c.id == order_id))).first()
            if row is None:
                return None
            items = (
                await conn.execute(
                    select(order_items)
                    .where(order_items.c.order_id == order_id)
                    .order_by(order_items.c.line)
                )
            ).all()
            reported = (
                await conn.execute(
                    select(order_progress).where(order_progress.c.order_id == order_id)
                )
            ).all()
            pending = (
                await conn.execute(
                    text(f"SELECT failure FROM {OUTBOX_TABLE} WHERE id = :id"), {"id": row.event_id}
                )
            ).first()
        steps = _steps(row, pending is not None, {r.state: r for r in reported})
        return OrderOut(
            order_id=row.id, email=row.email, customer=row.customer,
            total=as_amount(row.total_cents),
            items=[ItemOut(sku=i.sku, quantity=i.quantity, unit_price=as_amount(i.unit_cents))
                   for i in items],
            created_at=_utc(row.created_at), status=steps[-1].state, progress=steps,
            publish_failure=pending.failure if pending is not None else None,
        )  # fmt: skip

    # -- what the bus reports back -----------------------------------------------------------

    async def record(
        self,
        order_id: str,
        state: State,
        at: datetime,
        *,
        event_id: str | None = None,
        detail: str | None = None,
    ) -> bool:
        """Record that *order_id* reached *state* (once: a repeat changes nothing).

        False when no such order is in this database (another producer's order).
        """
        values = {"order_id": order_id, "state": state.value, "at": at, "event_id": event_id,
                  "detail": detail[:200] if detail else None}  # fmt: skip
        module = postgresql if self._dialect is Dialect.POSTGRES else sqlite
        statement = module.insert(order_progress).values(**values).on_conflict_do_nothing()
        async with self._writing, self.engine.begin() as conn:
            found = await conn.execute(select(orders.c.id).where(orders.c.id == order_id))
            if found.first() is None:
                return False
            await conn.execute(statement)
        return True


def _replay(earlier: tuple[str, str], fingerprint: str) -> Placed:
    order_id, digest = earlier
    if digest != fingerprint:
        raise KeyReused(order_id)
    return Placed(order_id, replayed=True)


def _steps(order: Row[Any], in_outbox: bool, reported: dict[str, Row[Any]]) -> list[Step]:
    steps = [Step(state=State.PLACED, at=_utc(order.created_at), event_id=order.event_id)]
    shipped = reported.get(State.SHIPMENT_REQUESTED.value)
    if not in_outbox or shipped is not None:  # a shipment request implies the event went out
        steps.append(Step(state=State.PUBLISHED, at=None))
    if shipped is not None:
        steps.append(
            Step(state=State.SHIPMENT_REQUESTED, at=_utc(shipped.at), event_id=shipped.event_id,
                 detail=shipped.detail)
        )  # fmt: skip
    return steps
