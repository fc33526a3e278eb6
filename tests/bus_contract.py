"""The behaviour every bus passes: written once, run on `TestBus` and on the real RabbitMQ.

A test module subclasses `BusContract` and provides the fixture `open_bus`: a function of
(topology document, routers by subscriber) returning an async context manager of a `Driver`
(as watermill runs one suite against every transport). The two can then never drift apart:
a scenario that `TestBus` gets wrong fails next to the same scenario passing on the broker.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import pytest
from pydantic import BaseModel

from bus import BatchContext, Context, Reject, Router, SyncContext
from bus.errors import InvalidEvent, UnknownEventType, UnroutableError
from bus.testing import Handled, Parked

DELAYS = ["200ms", "400ms"]
SCHEMA = {
    "type": "object",
    "required": ["order_id"],
    "properties": {"order_id": {"type": "string"}},
}


class Driver(Protocol):
    async def publish(self, event_type: str, data: Any, *, id: str | None = None) -> str: ...
    async def settle(self) -> None: ...
    def handled(self, subscriber: str) -> list[Handled]: ...
    def parked(self, subscriber: str) -> list[Parked]: ...
    def duplicate_count(self, subscriber: str) -> int: ...


OpenBus = Callable[[dict[str, Any], dict[str, Router]], AbstractAsyncContextManager[Driver]]


EVENT_TYPES = ("order.placed", "order.shipped", "order.eu.placed", "order", "shipment.requested",
               "audit.logged")  # fmt: skip


def topology_doc(prefix: str, bindings: dict[str, list[str]]) -> dict[str, Any]:
    """One topic exchange; subscriber name -> its binding keys; names unique to *prefix*."""
    exchange = f"{prefix}.events"
    return {
        "version": 1,
        "defaults": {"queue_type": "quorum", "prefetch": 16, "retry": {"delays": DELAYS}},
        "exchanges": {exchange: {"type": "topic"}},
        "events": {
            name: {"exchange": exchange, **({"schema": SCHEMA} if name == "order.placed" else {})}
            for name in EVENT_TYPES
        },
        "subscribers": {
            name: {
                "handlers": "tests.bus_contract:EMPTY",
                "queue": f"{prefix}.{name}",
                "bindings": [{"exchange": exchange, "keys": keys}],
            }
            for name, keys in bindings.items()
        },
    }


EMPTY = Router()


def recording(pattern: str = "#") -> Router:
    router = Router()

    @router.on(pattern)
    async def record(event: Any, ctx: Context) -> None:
        return None

    return router


class Order(BaseModel):
    order_id: str
    quantity: int = 1


class BusContract:
    @pytest.fixture
    def open_bus(self) -> OpenBus:
        raise NotImplementedError("a subclass provides the bus under test")

    # -- routing --------------------------------------------------------------------------

    async def test_fan_out_follows_rabbitmqs_topic_rule_for_star_and_hash(
        self, open_bus: OpenBus, prefix: str
    ) -> None:
        bindings = {
            "exact": ["order.placed"],
            "star": ["order.*"],  # exactly one word after `order.`
            "deep": ["order.#"],  # zero or more words: `order` itself too
            "all": ["#"],
            "twice": ["order.placed", "order.*"],  # two bindings match: still one copy
        }
        routers = {name: recording() for name in bindings}
        sent = [
            ("order.placed", {"order_id": "o-1"}),
            ("order.eu.placed", {}),
            ("order", {}),
            ("shipment.requested", {}),
        ]
        async with open_bus(topology_doc(prefix, bindings), routers) as bus:
            for event_type, data in sent:
                await bus.publish(event_type, data, id=f"id-{event_type}")
            await bus.settle()
            got = {name: sorted(h.type for h in bus.handled(name)) for name in bindings}
        assert got == {
            "exact": ["order.placed"],
            "star": ["order.placed"],
            "deep": ["order", "order.eu.placed", "order.placed"],
            "all": ["order", "order.eu.placed", "order.placed", "shipment.requested"],
            "twice": ["order.placed"],
        }

    async def test_publish_refuses_what_it_cannot_deliver_before_sending(
        self, open_bus: OpenBus, prefix: str
    ) -> None:
        bindings = {"orders": ["order.*"]}
        async with open_bus(topology_doc(prefix, bindings), {"orders": recording()}) as bus:
            with pytest.raises(UnknownEventType):
                await bus.publish("order.cancelled", {})
            with pytest.raises(InvalidEvent):
                await bus.publish("order.placed", {"order_id": 42})  # fails the JSON Schema
            with pytest.raises(UnroutableError):
                await bus.publish("audit.logged", {})  # declared, but no queue is bound
            await bus.settle()
            assert bus.handled("orders") == []

    # -- the retry ladder -----------------------------------------------------------------

    async def test_a_handler_failing_twice_succeeds_on_the_third_attempt(
        self, open_bus: OpenBus, prefix: str
    ) -> None:
        router, attempts = Router(), []

        @router.on("order.placed")
        async def flaky(event: dict[str, Any], ctx: Context) -> None:
            attempts.append(ctx.attempt)
            if ctx.attempt < 3:
                raise ConnectionError("warehouse unavailable")

        steady = recording()
        bindings = {"flaky": ["order.placed"], "steady": ["order.placed"]}
        async with open_bus(
            topology_doc(prefix, bindings), {"flaky": router, "steady": steady}
        ) as bus:
            await bus.publish("order.placed", {"order_id": "o-1"}, id="e-1")
            await bus.settle()
            assert attempts == [1, 2, 3]
            assert bus.handled("flaky") == [Handled("order.placed", "e-1", 3)]
            assert bus.handled("steady") == [Handled("order.placed", "e-1", 1)], (
                "a retry returns to its own queue only"
            )
            assert bus.parked("flaky") == []

    async def test_a_handler_that_always_fails_is_parked_after_the_last_delay(
        self, open_bus: OpenBus, prefix: str
    ) -> None:
        router, attempts = Router(), []

        @router.on("order.placed")
        async def boom(event: dict[str, Any], ctx: Context) -> None:
            attempts.append(ctx.attempt)
            raise ValueError("smtp says no")

        async with open_bus(
            topology_doc(prefix, {"email": ["order.placed"]}), {"email": router}
        ) as bus:
            await bus.publish("order.placed", {"order_id": "o-2"}, id="e-2")
            await bus.settle()
            assert attempts == [1, 2, 3]
            assert bus.handled("email") == []
            (p,) = bus.parked("email")
        assert (p.id, p.type, p.reason, p.data) == (
            "e-2", "order.placed", "retries-exhausted", {"order_id": "o-2"}
        )  # fmt: skip
        h = p.headers
        assert h["bus-attempt"] == 3
        assert h["bus-dead-reason"] == "retries-exhausted"
        assert h["bus-subscriber"] == "email"
        assert h["bus-handler"].endswith("boom")
        assert h["bus-exception-type"] == "ValueError"
        assert h["bus-exception-message"] == "smtp says no"
        assert "smtp says no" in h["bus-exception-stacktrace"]
        assert h["bus-original-exchange"] == f"{prefix}.events"
        assert h["bus-original-routing-key"] == "order.placed"
        assert h["bus-first-failed-at"] <= h["bus-failed-at"]
        assert h["cloudEvents_id"] == "e-2", "the original headers travel with it"
        assert not [k for k in h if k.startswith("x-death")]

    async def test_a_handler_over_its_timeout_takes_the_ladder_and_parks_as_handler_timeout(
        self, open_bus: OpenBus, prefix: str
    ) -> None:
        router, attempts = Router(), []

        @router.on("order.placed")
        async def slow(event: dict[str, Any], ctx: Context) -> None:
            attempts.append(ctx.attempt)
            await asyncio.sleep(30)  # stopped at the subscriber's timeout, every attempt

        doc = topology_doc(prefix, {"email": ["order.placed"]})
        doc["subscribers"]["email"]["timeout"] = "300ms"
        async with open_bus(doc, {"email": router}) as bus:
            await bus.publish("order.placed", {"order_id": "o-3"}, id="e-t")
            await bus.settle()
            assert attempts == [1, 2, 3]
            assert bus.handled("email") == []
            (p,) = bus.parked("email")
        assert (p.id, p.reason) == ("e-t", "retries-exhausted")
        assert p.headers["bus-exception-type"] == "bus.HandlerTimeout"
        assert p.headers["bus-attempt"] == 3

    # -- straight to the DLQ --------------------------------------------------------------

    async def test_reject_parks_at_once_without_retries(
        self, open_bus: OpenBus, prefix: str
    ) -> None:
        router, attempts = Router(), []

        @router.on("order.placed")
        async def blocked(event: dict[str, Any], ctx: Context) -> None:
            attempts.append(ctx.attempt)
            raise Reject("customer is blocked")

        async with open_bus(
            topology_doc(prefix, {"email": ["order.placed"]}), {"email": router}
        ) as bus:
            await bus.publish("order.placed", {"order_id": "o-3"}, id="e-3")
            await bus.settle()
            assert attempts == [1]
            (p,) = bus.parked("email")
        assert (p.id, p.reason) == ("e-3", "rejected")
        assert p.headers["bus-attempt"] == 1
        assert p.headers["bus-exception-message"] == "customer is blocked"

    async def test_a_payload_failing_the_handlers_model_is_parked_as_invalid(
        self, open_bus: OpenBus, prefix: str
    ) -> None:
        router, seen = Router(), []

        @router.on("order.placed")
        async def typed(event: Order, ctx: Context) -> None:
            seen.append(event)

        async with open_bus(
            topology_doc(prefix, {"email": ["order.placed"]}), {"email": router}
        ) as bus:
            await bus.publish("order.placed", {"order_id": "o-4", "quantity": "many"}, id="e-4")
            await bus.publish("order.placed", {"order_id": "o-5", "quantity": 2}, id="e-5")
            await bus.settle()
            assert seen == [Order(order_id="o-5", quantity=2)]
            (p,) = bus.parked("email")
        assert (p.id, p.reason) == ("e-4", "invalid")
        assert "quantity" in p.headers["bus-exception-message"]
        assert p.headers["bus-attempt"] == 1

    async def test_an_event_type_no_handler_matches_is_parked_as_no_handler(
        self, open_bus: OpenBus, prefix: str
    ) -> None:
        bindings = {"orders": ["order.*"]}
        router = recording("order.placed")  # bound to order.* but handles only order.placed
        async with open_bus(topology_doc(prefix, bindings), {"orders": router}) as bus:
            await bus.publish("order.shipped", {}, id="e-6")
            await bus.settle()
            (p,) = bus.parked("orders")
        assert (p.id, p.type, p.reason) == ("e-6", "order.shipped", "no-handler")

    # -- idempotency and follow-ups -------------------------------------------------------

    async def test_the_same_id_twice_runs_the_handler_once(
        self, open_bus: OpenBus, prefix: str
    ) -> None:
        async with open_bus(topology_doc(prefix, {"email": ["order.placed"]}),
                            {"email": recording()}) as bus:  # fmt: skip
            await bus.publish("order.placed", {"order_id": "o-7"}, id="e-7")
            await bus.settle()
            await bus.publish("order.placed", {"order_id": "o-7"}, id="e-7")
            await bus.settle()
            assert bus.handled("email") == [Handled("order.placed", "e-7", 1)]
            assert bus.duplicate_count("email") == 1

    async def test_a_batch_handler_runs_each_id_once_and_parks_the_item_it_rejects(
        self, open_bus: OpenBus, prefix: str
    ) -> None:
        router = Router()
        seen: list[str] = []

        @router.on("order.placed", batch=10, flush="300ms")
        async def insert(events: list[Order], ctx: BatchContext) -> None:
            for i, order in enumerate(events):
                seen.append(order.order_id)
                if order.order_id == "bad":
                    ctx.reject(i, "not an order of ours")

        async with open_bus(topology_doc(prefix, {"rows": ["order.placed"]}),
                            {"rows": router}) as bus:  # fmt: skip
            for order_id, event_id in (("a", "b-1"), ("b", "b-2"), ("bad", "b-3"), ("a", "b-1")):
                await bus.publish("order.placed", {"order_id": order_id}, id=event_id)
            await bus.settle()  # the last one is a copy of b-1, sent before its batch ran
            assert sorted(seen) == ["a", "b", "bad"], "b-1's copy joined no batch"
            assert sorted(h.id for h in bus.handled("rows")) == ["b-1", "b-2"]
            assert bus.duplicate_count("rows") == 1
            (parked,) = bus.parked("rows")
            assert (parked.id, parked.reason) == ("b-3", "rejected")
            assert parked.headers["bus-exception-message"] == "not an order of ours"

    async def test_a_plain_def_runs_in_a_thread_and_its_blocking_publish_reaches_the_others(
        self, open_bus: OpenBus, prefix: str
    ) -> None:
        fulfillment, shipping = Router(), Router()
        threads: list[str] = []

        @fulfillment.on("order.placed")
        def request_shipment(event: dict[str, Any], ctx: SyncContext) -> None:
            threads.append(threading.current_thread().name)
            if ctx.attempt == 1:
                raise ConnectionError("the warehouse is down")  # a thread handler retries too
            ctx.publish("shipment.requested", {"order_id": event["order_id"]})

        @shipping.on("shipment.requested")
        async def ship(event: dict[str, Any], ctx: Context) -> None:
            return None

        bindings = {"fulfillment": ["order.placed"], "shipping": ["shipment.requested"]}
        routers = {"fulfillment": fulfillment, "shipping": shipping}
        async with open_bus(topology_doc(prefix, bindings), routers) as bus:
            await bus.publish("order.placed", {"order_id": "o-9"}, id="e-9")
            await bus.settle()
            assert bus.handled("fulfillment") == [Handled("order.placed", "e-9", 2)]
            assert [h.type for h in bus.handled("shipping")] == ["shipment.requested"]
        assert len(threads) == 2
        assert threading.main_thread().name not in threads, "never on the event loop's thread"

    async def test_a_follow_up_reaches_other_subscribers_once_even_when_the_handler_retries(
        self, open_bus: OpenBus, prefix: str
    ) -> None:
        fulfillment, shipping = Router(), Router()
        causes: list[tuple[str | None, str]] = []

        @fulfillment.on("order.placed")
        async def request_shipment(event: dict[str, Any], ctx: Context) -> None:
            await ctx.publish("shipment.requested", {"order_id": event["order_id"]})
            if ctx.attempt == 1:
                raise ConnectionError("failed after publishing the follow-up")

        @shipping.on("shipment.requested")
        async def ship(event: dict[str, Any], ctx: Context) -> None:
            causes.append((ctx.meta.causation_id, ctx.correlation_id))

        bindings = {"fulfillment": ["order.placed"], "shipping": ["shipment.requested"]}
        routers = {"fulfillment": fulfillment, "shipping": shipping}
        async with open_bus(topology_doc(prefix, bindings), routers) as bus:
            await bus.publish("order.placed", {"order_id": "o-8"}, id="e-8")
            await bus.settle()
            assert bus.handled("fulfillment") == [Handled("order.placed", "e-8", 2)]
            (follow_up,) = bus.handled("shipping")
            assert follow_up.type == "shipment.requested" and follow_up.id != "e-8"
            assert bus.duplicate_count("shipping") == 1, "the retry's follow-up has the same id"
        assert causes == [("e-8", "e-8")], "caused by e-8, in e-8's conversation"
