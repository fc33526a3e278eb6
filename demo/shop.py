"""The shop's clients in `bus demo`: orders POSTed to the orders API at a steady rate, each
with its own `Idempotency-Key`, and the API's response times; the shop's till, a producer of its
own, whose orders are at times cancelled at once; and customers asking for refunds."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from api.catalogue import as_amount, price, total_cents
from bus import Publisher

# what the API's catalogue sells (api/catalogue.py); the API prices the order itself
SKUS = ("BOOK-1", "BOOK-2", "MUG-1", "TSHIRT-M", "STICKER")
CUSTOMERS = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus")


def order_request(i: int) -> dict[str, Any]:
    """A valid `POST /orders` body, different for each *i* and the same on every run."""
    rnd = random.Random(i)
    lines = [(sku, rnd.randint(1, 3)) for sku in rnd.sample(SKUS, rnd.randint(1, 3))]
    customer = CUSTOMERS[i % len(CUSTOMERS)]
    return {
        "email": f"{customer.lower()}{i + 1}@example.com",
        "customer": customer,
        "items": [{"sku": sku, "quantity": n} for sku, n in lines],
    }


@dataclass
class Shop:
    """POSTs *orders* orders at *rate* per second; `accepted` counts the 201s."""

    api: str  # http://127.0.0.1:PORT
    run_id: str
    orders: int
    rate: float
    accepted: int = 0
    latencies: dict[int, float] = field(default_factory=dict)  # seconds, by the order's number
    order_ids: dict[int, str] = field(default_factory=dict)  # by the order's number

    async def run(self, halfway: Callable[[], Awaitable[None]] | None = None) -> None:
        """All orders, paced; *halfway* is awaited once half of them were accepted."""
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=self.api, timeout=10, limits=limits) as client:
            start = time.monotonic()
            pending: set[asyncio.Task[None]] = set()
            for i in range(self.orders):
                pause = start + i / self.rate - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                if halfway is not None and i == self.orders // 2:
                    await asyncio.gather(*pending)
                    await halfway()
                task = asyncio.create_task(self._place(client, i))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)

    async def _place(self, client: httpx.AsyncClient, i: int) -> None:
        key = f"demo-{self.run_id}-{i + 1:04d}"
        started = time.perf_counter()
        response = await client.post(
            "/orders", json=order_request(i), headers={"Idempotency-Key": key}
        )
        took = time.perf_counter() - started
        if response.status_code != 201:
            raise RuntimeError(
                f"POST /orders answered {response.status_code}: {response.text[:200]}"
            )
        self.latencies[i] = took
        self.order_ids[i] = response.json()["order_id"]
        self.accepted += 1

    def percentiles_ms(self) -> dict[str, float]:
        """p50, p99 and max response time in milliseconds of the warm API, and the first
        (cold) request apart: a fresh process pays for its lazy imports and first queries once."""
        if not self.latencies:
            return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "first_ms": 0.0}
        first = self.latencies.get(0, 0.0)
        warm = sorted(t for i, t in self.latencies.items() if i) or [first]
        p99 = warm[min(len(warm) - 1, int(len(warm) * 0.99))]
        return {
            "p50_ms": round(statistics.median(warm) * 1000, 2),
            "p99_ms": round(p99 * 1000, 2),
            "max_ms": round(warm[-1] * 1000, 2),
            "first_ms": round(first * 1000, 2),
        }


def till_order(run_id: str, i: int) -> dict[str, Any]:
    """The `order.placed` data of the till's order *i* (priced from the API's catalogue)."""
    body = order_request(1000 + i)
    lines = price((item["sku"], item["quantity"]) for item in body["items"])
    return {
        "order_id": f"till-{run_id}-{i + 1:03d}",
        "email": body["email"],
        "customer": body["customer"],
        "total": as_amount(total_cents(lines)),
        "items": [
            {"sku": ln.sku, "quantity": ln.quantity, "unit_price": as_amount(ln.unit_cents)}
            for ln in lines
        ],
    }


def order_total(i: int) -> float:
    """The total the API charges for the shop's order *i*."""
    lines = price((item["sku"], item["quantity"]) for item in order_request(i)["items"])
    return as_amount(total_cents(lines))


@dataclass
class Till:
    """The shop's till, a producer of its own (a `bus.Publisher`): each of its orders is
    cancelled at once, its `order.cancelled` published right behind its `order.placed`."""

    publisher: Publisher
    run_id: str
    order_ids: list[str] = field(default_factory=list)

    async def place_and_cancel(self, count: int) -> None:
        events: list[tuple[str, dict[str, Any]]] = []
        for i in range(count):
            order = till_order(self.run_id, i)
            cancel = {"order_id": order["order_id"], "reason": "changed their mind"}
            events += [("order.placed", order), ("order.cancelled", cancel)]
        await self.publisher.publish_many(events)  # in this order, on one channel
        self.order_ids += [data["order_id"] for kind, data in events if kind == "order.placed"]


async def request_refunds(
    publisher: Publisher, run_id: str, orders: dict[int, str], count: int
) -> list[str]:
    """`refund.requested` for *count* of the shop's *orders* (number -> order id); the ids."""
    ids = []
    for n, (i, order_id) in enumerate(sorted(orders.items())[:count]):
        refund_id = f"rf-{run_id}-{n + 1:02d}"
        data = {"refund_id": refund_id, "order_id": order_id, "amount": order_total(i)}
        await publisher.publish("refund.requested", data)
        ids.append(refund_id)
    return ids
