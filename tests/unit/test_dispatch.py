"""Every decision of the dispatch step, with no network: one delivery in, one outcome out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from bus import Context, Reject, Router
from bus.consume.claims import Claims
from bus.consume.dispatch import Ack, Dispatcher, Duplicate, Park, Requeue, Retry
from bus.retry import DeadReason
from bus.stores import Claim, MemoryStore
from bus.topology.model import Topology, from_dict

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def topology(delays: list[str] | None = None) -> Topology:
    return from_dict(
        {
            "version": 1,
            "defaults": {"retry": {"delays": delays or ["1m", "5m"]}},
            "exchanges": {"events": {"type": "topic"}},
            "events": {
                "order.placed": {
                    "exchange": "events",
                    "schema": {"type": "object", "required": ["order_id"]},
                },
                "order.shipped": {"exchange": "events"},
                "mail.sent": {"exchange": "events"},
            },
            "subscribers": {
                "email": {
                    "handlers": "tests.unit.test_dispatch:router",
                    "bindings": [{"exchange": "events", "keys": ["order.*"]}],
                }
            },
        },
        source="test",
    )


@dataclass
class Msg:
    """A delivery as dispatch reads it."""

    body: bytes = b'{"order_id": "o-1"}'
    message_id: str | None = "e-1"
    type: str | None = "order.placed"
    headers: dict[str, Any] = field(default_factory=dict)
    exchange: str = "events"
    routing_key: str = "order.placed"
    app_id: str | None = "shop"
    timestamp: datetime | None = None
    correlation_id: str | None = None


class Published:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any, dict[str, Any]]] = []

    async def publish(self, event_type: str, data: Any, **kw: Any) -> str:
        self.events.append((event_type, data, kw))
        return str(kw.get("id"))


class Harness:
    def __init__(self, router: Router, *, delays: list[str] | None = None, lease: float = 30):
        self.topology = topology(delays)
        self.sub = self.topology.subscriber("email")
        self.store = MemoryStore()
        self.published = Published()
        self.observed: list[tuple[str, float]] = []
        self.dispatcher = Dispatcher(
            self.topology, self.sub, router, Claims(self.store, "email", lease), self.published,
            clock=lambda: NOW, observe=lambda t, s: self.observed.append((t, s)),
        )  # fmt: skip

    async def __call__(self, m: Msg | None = None) -> Any:
        return await self.dispatcher.dispatch(m or Msg())


class Calls:
    def __init__(self) -> None:
        self.seen: list[tuple[Any, int]] = []


def router_with(body: Any) -> tuple[Router, Calls]:
    router, calls = Router(), Calls()

    @router.on("order.placed")
    async def handle(event: dict[str, Any], ctx: Context) -> None:
        calls.seen.append((event, ctx.attempt))
        await body(event, ctx)

    return router, calls


async def ok(event: Any, ctx: Context) -> None:
    return None


async def boom(event: Any, ctx: Context) -> None:
    raise ConnectionError("warehouse down")


async def reject(event: Any, ctx: Context) -> None:
    raise Reject("blocked customer")


# -- the handler returns ------------------------------------------------------------------


async def test_a_handler_that_returns_is_acked_and_its_id_recorded() -> None:
    router, calls = router_with(ok)
    run = Harness(router)
    assert await run() == Ack("order.placed")
    assert calls.seen == [({"order_id": "o-1"}, 1)]
    assert await run.store.claim("email", "e-1") is Claim.DONE
    assert [t for t, _ in run.observed] == ["order.placed"]


async def test_the_ack_outcome_is_shared_so_a_handled_message_allocates_none() -> None:
    router, _ = router_with(ok)
    run = Harness(router)
    first = await run(Msg(message_id="e-1"))
    second = await run(Msg(message_id="e-2"))
    assert first is second


async def test_a_second_delivery_of_a_processed_id_is_a_duplicate_and_does_not_run() -> None:
    router, calls = router_with(ok)
    run = Harness(router)
    await run()
    assert await run() == Duplicate("order.placed")
    assert len(calls.seen) == 1


# -- the handler raises -------------------------------------------------------------------


async def test_a_failure_goes_to_the_first_retry_queue_with_the_failure_story() -> None:
    router, _ = router_with(boom)
    run = Harness(router)
    outcome = await run(Msg(headers={"x-death": [{"count": 1}], "keep": "me"}))
    assert isinstance(outcome, Retry)
    assert (outcome.queue, outcome.delay) == ("email.retry.1m", "1m")
    h = outcome.headers
    assert h["bus-attempt"] == 2
    assert h["bus-exception-type"] == "ConnectionError"
    assert h["bus-exception-message"] == "warehouse down"
    assert "warehouse down" in h["bus-exception-stacktrace"]
    assert h["bus-handler"].endswith("handle")
    assert h["bus-subscriber"] == "email"
    assert h["bus-original-exchange"] == "events"
    assert h["bus-original-routing-key"] == "order.placed"
    assert h["bus-failed-at"] == h["bus-first-failed-at"] == "2026-12-01T08:00:00Z"
    assert h["keep"] == "me"
    assert "x-death" not in h, "x-death* is the broker's: stripped on republish"
    assert "bus-dead-reason" not in h


async def test_a_failed_attempt_leaves_no_record_so_the_retry_runs_the_handler() -> None:
    router, _ = router_with(boom)
    run = Harness(router)
    await run()
    assert await run.store.claim("email", "e-1") is Claim.CLAIMED


async def test_the_second_failure_goes_to_the_next_delay() -> None:
    router, calls = router_with(boom)
    run = Harness(router)
    outcome = await run(Msg(headers={"bus-attempt": 2, "bus-first-failed-at": "earlier"}))
    assert isinstance(outcome, Retry)
    assert outcome.queue == "email.retry.5m"
    assert outcome.headers["bus-attempt"] == 3
    assert outcome.headers["bus-first-failed-at"] == "earlier"
    assert calls.seen[0][1] == 2, "ctx.attempt is the bus-attempt header"


async def test_a_failure_after_the_last_delay_parks_with_retries_exhausted() -> None:
    router, _ = router_with(boom)
    run = Harness(router)
    outcome = await run(Msg(headers={"bus-attempt": 3}))
    assert isinstance(outcome, Park)
    assert (outcome.queue, outcome.reason) == ("email.dlq", DeadReason.RETRIES_EXHAUSTED)
    assert outcome.headers["bus-dead-reason"] == "retries-exhausted"
    assert outcome.headers["bus-attempt"] == 3, "on the DLQ: the attempts made"


async def test_reject_parks_at_once_without_retries() -> None:
    router, _ = router_with(reject)
    run = Harness(router)
    outcome = await run()
    assert isinstance(outcome, Park)
    assert outcome.reason is DeadReason.REJECTED
    assert outcome.headers["bus-attempt"] == 1
    assert outcome.headers["bus-exception-message"] == "blocked customer"
    assert await run.store.claim("email", "e-1") is Claim.CLAIMED, "a rejected id is released"


# -- the message cannot be handled --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"no_order_id": 1}', "schema"),
    ],
)
async def test_an_invalid_body_parks_as_invalid_and_the_handler_never_runs(
    body: bytes, why: str
) -> None:
    router, calls = router_with(ok)
    run = Harness(router)
    outcome = await run(Msg(body=body))
    assert isinstance(outcome, Park), why
    assert outcome.reason is DeadReason.INVALID
    assert outcome.headers["bus-exception-type"] == "bus.InvalidMessage"
    assert calls.seen == []


class Shipped(BaseModel):
    order_id: str
    parcels: int


async def test_a_body_failing_the_handlers_model_parks_as_invalid() -> None:
    router = Router()

    @router.on("order.shipped")
    async def shipped(event: Shipped, ctx: Context) -> None:
        raise AssertionError("must not run")

    run = Harness(router)
    outcome = await run(Msg(type="order.shipped", body=b'{"order_id": "o-1", "parcels": "x"}'))
    assert isinstance(outcome, Park)
    assert outcome.reason is DeadReason.INVALID
    assert "parcels" in outcome.headers["bus-exception-message"]


@pytest.mark.parametrize(("message_id", "event_type"), [(None, "order.placed"), ("e-1", None)])
async def test_a_message_without_id_or_type_parks_as_invalid(
    message_id: str | None, event_type: str | None
) -> None:
    router, calls = router_with(ok)
    outcome = await Harness(router)(Msg(message_id=message_id, type=event_type))
    assert isinstance(outcome, Park)
    assert outcome.reason is DeadReason.INVALID
    assert outcome.event_type == "unknown"
    assert calls.seen == []


async def test_cloudevents_headers_alone_are_enough() -> None:
    router, calls = router_with(ok)
    m = Msg(message_id=None, type=None,
            headers={"cloudEvents_id": "ce-1", "cloudEvents_type": "order.placed"})  # fmt: skip
    assert await Harness(router)(m) == Ack("order.placed")
    assert len(calls.seen) == 1


async def test_a_type_no_handler_matches_parks_as_no_handler() -> None:
    router, _ = router_with(ok)
    outcome = await Harness(router)(Msg(type="order.shipped", routing_key="order.shipped"))
    assert isinstance(outcome, Park)
    assert outcome.reason is DeadReason.NO_HANDLER
    assert "order.shipped" in outcome.headers["bus-exception-message"]


# -- claims -------------------------------------------------------------------------------


async def test_an_id_held_by_a_live_replica_past_the_wait_is_requeued_and_never_run() -> None:
    router, calls = router_with(ok)
    run = Harness(router, lease=0.05)  # our wait: lease + 1 s
    assert await run.store.claim("email", "e-1", lease=300) is Claim.CLAIMED  # the holder
    outcome = await run()
    assert isinstance(outcome, Requeue)
    assert calls.seen == []
    assert await run.store.claim("email", "e-1") is Claim.BUSY, "the holder keeps its lease"


async def test_a_handler_cut_off_mid_run_lets_its_claim_go_so_the_redelivery_runs_it() -> None:
    started = asyncio.Event()

    async def slow_first(event: Any, ctx: Context) -> None:
        if len(calls.seen) == 1:
            started.set()
            await asyncio.sleep(60)  # in flight when the channel closes

    router, calls = router_with(slow_first)
    run = Harness(router)  # the default 30 s lease: the redelivery must not wait it out
    first = asyncio.create_task(run())
    await started.wait()
    first.cancel()  # what aiormq does to a delivery's task when its channel closes
    with pytest.raises(asyncio.CancelledError):
        await first
    outcome = await asyncio.wait_for(run(), 5)  # the broker's redelivery
    assert isinstance(outcome, Ack)
    assert not run.dispatcher.claims.holds("e-1"), "nothing left for this process to renew"
    assert [attempt for _, attempt in calls.seen] == [1, 1]


async def test_a_store_outage_raises_so_the_shell_returns_the_message() -> None:
    router, calls = router_with(ok)
    run = Harness(router)

    async def down(*args: Any, **kw: Any) -> Claim:
        raise ConnectionError("store unreachable")

    run.store.claim = down  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await run()
    assert calls.seen == []


# -- follow-ups ---------------------------------------------------------------------------


async def test_ctx_publish_carries_causation_and_a_follow_up_id_stable_across_attempts() -> None:
    async def follow_up(event: Any, ctx: Context) -> None:
        await ctx.publish("mail.sent", {"order_id": event["order_id"]})
        if ctx.attempt == 1:
            raise ConnectionError("after the follow-up")

    router, _ = router_with(follow_up)
    run = Harness(router)
    await run(Msg(correlation_id="conv-1"))
    await run(Msg(correlation_id="conv-1", headers={"bus-attempt": 2}))
    (t1, d1, kw1), (t2, _, kw2) = run.published.events
    assert (t1, d1, t2) == ("mail.sent", {"order_id": "o-1"}, "mail.sent")
    assert kw1["causation_id"] == "e-1"
    assert kw1["correlation_id"] == "conv-1"
    assert kw1["id"] == kw2["id"], "a retried handler republishes the same follow-up id"


router = Router()  # the topology's `handlers:` target, unused here
