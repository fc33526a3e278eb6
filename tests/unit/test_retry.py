"""bus.retry: the ladder, the attempt counter and the failure headers."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime
from typing import Any

import pytest

from bus.retry import (
    MAX_FRAMES,
    DeadLetter,
    DeadReason,
    RetryLater,
    after_failure,
    attempt_of,
    dead,
    failure_headers,
    format_trace,
    replay_headers,
)
from bus.topology.model import Subscriber, from_dict

EARLIER = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NOW = datetime(2024, 5, 1, 12, 5, tzinfo=UTC)


@pytest.fixture
def sub() -> Subscriber:
    return from_dict(
        {
            "version": 1,
            "exchanges": {"events": {}},
            "events": {"order.placed": {"exchange": "events"}},
            "subscribers": {
                "email": {
                    "handlers": "m:router",
                    "retry": {"delays": ["1m", "5m", "1h"]},
                    "bindings": [{"exchange": "events", "keys": ["order.placed"]}],
                }
            },
        }
    ).subscriber("email")


def test_after_failure_walks_the_ladder_then_dead_letters(sub: Subscriber) -> None:
    assert after_failure(sub, 1) == RetryLater("email.retry.1m", "1m", 2)
    assert after_failure(sub, 2) == RetryLater("email.retry.5m", "5m", 3)
    assert after_failure(sub, 3) == RetryLater("email.retry.1h", "1h", 4)
    assert after_failure(sub, 4) == DeadLetter("email.dlq", DeadReason.RETRIES_EXHAUSTED)
    assert after_failure(sub, 40) == DeadLetter("email.dlq", DeadReason.RETRIES_EXHAUSTED)


def test_without_delays_the_first_failure_dead_letters(sub: Subscriber) -> None:
    from dataclasses import replace

    assert after_failure(replace(sub, delays=()), 1) == DeadLetter(
        "email.dlq", DeadReason.RETRIES_EXHAUSTED
    )


def test_dead_parks_in_the_subscribers_dlq(sub: Subscriber) -> None:
    assert dead(sub, DeadReason.REJECTED) == DeadLetter("email.dlq", DeadReason.REJECTED)


@pytest.mark.parametrize(
    ("headers", "attempt"),
    [
        (None, 1),
        ({}, 1),
        ({"bus-attempt": 3}, 3),
        ({"bus-attempt": "4"}, 4),
        ({"bus-attempt": b"2"}, 2),
        ({"bus-attempt": bytearray(b"5")}, 5),
        ({"bus-attempt": "garbage"}, 1),
        ({"bus-attempt": b"\xff"}, 1),
        ({"bus-attempt": None}, 1),
        ({"bus-attempt": 0}, 1),
        ({"bus-attempt": -7}, 1),
        ({"x-death": [{"count": 9}]}, 1),
    ],
)
def test_attempt_of_reads_only_bus_attempt_and_survives_garbage(
    headers: dict[str, Any] | None, attempt: int
) -> None:
    assert attempt_of(headers) == attempt


def boom(message: str = "smtp down") -> RuntimeError:
    try:
        raise RuntimeError(message)
    except RuntimeError as exc:
        return exc


def headers_for(
    original: dict[str, Any] | None, decision: RetryLater | DeadLetter, **kw: Any
) -> dict[str, Any]:
    args: dict[str, Any] = {
        "attempt": 1, "subscriber": "email", "handler": "subscribers.email.handlers.confirm",
        "error": boom(), "now": NOW, "exchange": "events", "routing_key": "order.placed",
    }  # fmt: skip
    return failure_headers(original, decision=decision, **{**args, **kw})


RETRY = RetryLater("email.retry.1m", "1m", 2)
DLQ = DeadLetter("email.dlq", DeadReason.RETRIES_EXHAUSTED)


def test_failure_headers_tell_the_failure_story() -> None:
    h = headers_for({"cloudEvents_id": "e-1"}, RETRY)
    assert h["cloudEvents_id"] == "e-1", "the original headers are kept"
    assert h["bus-attempt"] == 2, "a retry copy carries the attempt it will be"
    assert h["bus-first-failed-at"] == h["bus-failed-at"] == "2024-05-01T12:05:00Z"
    assert h["bus-subscriber"] == "email"
    assert h["bus-handler"] == "subscribers.email.handlers.confirm"
    assert h["bus-exception-type"] == "RuntimeError"
    assert h["bus-exception-message"] == "smtp down"
    assert "RuntimeError: smtp down" in h["bus-exception-stacktrace"]
    assert h["bus-original-exchange"] == "events"
    assert h["bus-original-routing-key"] == "order.placed"
    assert not [k for k in h if k.startswith("x-")]


def test_failure_headers_name_non_builtin_exceptions_with_their_module() -> None:
    from bus.errors import InvalidEvent

    assert headers_for(None, RETRY, error=InvalidEvent("x"))["bus-exception-type"] == (
        "bus.errors.InvalidEvent"
    )


def test_failure_headers_strip_every_broker_death_header() -> None:
    original = {
        "x-death": [{"count": 1, "reason": "expired"}],
        "x-first-death-exchange": "",
        "x-first-death-queue": "email.retry.1m",
        "x-first-death-reason": "expired",
        "x-last-death-exchange": "",
        "x-last-death-queue": "email.retry.1m",
        "x-last-death-reason": "expired",
        "x-custom": "kept",
        "traceparent": "00-a-b-01",
    }
    h = headers_for(original, RETRY)
    assert h["x-custom"] == "kept" and h["traceparent"] == "00-a-b-01"
    assert not [k for k in h if "death" in k], h


def test_failure_headers_keep_the_first_failure_and_original_route() -> None:
    earlier = headers_for(None, RETRY, now=EARLIER)
    later = headers_for(earlier, RetryLater("email.retry.5m", "5m", 3), attempt=2, now=NOW,
                        exchange="", routing_key="email")  # fmt: skip
    assert later["bus-first-failed-at"] == "2024-05-01T12:00:00Z"
    assert later["bus-failed-at"] == "2024-05-01T12:05:00Z"
    assert later["bus-original-exchange"] == "events"
    assert later["bus-original-routing-key"] == "order.placed"
    assert later["bus-attempt"] == 3


def test_stack_trace_is_truncated_to_8_kib_keeping_its_end() -> None:
    def deep(n: int, error: BaseException) -> None:
        if n == 0:
            raise error
        deep(n - 1, error)

    try:  # two chained failures, each deeper than MAX_FRAMES: well over 8 KiB in all
        try:
            deep(200, KeyError("first"))
        except KeyError:
            deep(200, ValueError("the bottom"))
    except ValueError as exc:
        error = exc
    h = headers_for(None, RETRY, error=error)
    trace = h["bus-exception-stacktrace"]
    assert len(trace.encode()) <= 8 * 1024
    assert "truncated" in trace
    assert trace.rstrip().endswith("ValueError: the bottom"), "the end names the error"


def test_long_exception_message_is_truncated() -> None:
    h = headers_for(None, RETRY, error=boom("é" * 5000))
    assert len(h["bus-exception-message"].encode()) <= 1024


def test_dead_reason_is_set_only_on_dlq_copies() -> None:
    retry = headers_for(None, RETRY)
    assert "bus-dead-reason" not in retry
    parked = headers_for(retry, DLQ, attempt=4)
    assert parked["bus-dead-reason"] == "retries-exhausted"
    assert parked["bus-attempt"] == 4, "a DLQ copy carries the attempts made"


def test_a_retry_copy_of_a_replayed_dlq_message_drops_the_old_dead_reason() -> None:
    parked = headers_for(None, DLQ, attempt=4)
    assert "bus-dead-reason" not in headers_for(parked, RETRY)


def test_invalid_message_described_by_text_has_no_stack_trace() -> None:
    h = headers_for(None, DeadLetter("email.dlq", DeadReason.INVALID), error="body is not JSON")
    assert h["bus-exception-type"] == "bus.InvalidMessage"
    assert h["bus-exception-message"] == "body is not JSON"
    assert h["bus-exception-stacktrace"] == ""
    assert h["bus-dead-reason"] == "invalid"


def test_handler_may_be_unknown() -> None:
    h = headers_for(None, DeadLetter("email.dlq", DeadReason.NO_HANDLER), handler=None)
    assert h["bus-handler"] == ""


def test_replay_headers_reset_the_attempt_and_forget_the_failure() -> None:
    parked = headers_for({"cloudEvents_id": "e-1", "x-death": [{}]}, DLQ, attempt=4)
    replayed = replay_headers(parked)
    assert replayed == {"cloudEvents_id": "e-1", "bus-attempt": 1}


def test_replay_headers_of_nothing_is_attempt_one() -> None:
    assert replay_headers(None) == {"bus-attempt": 1}


def test_format_trace_is_the_standard_trace_without_caret_lines() -> None:
    def fail() -> None:
        try:
            try:
                raise KeyError("sku-1")
            except KeyError as exc:
                raise ValueError("cannot reserve") from exc
        except ValueError:
            raise ConnectionError("warehouse down")  # noqa: B904 - the implicit context is the point

    try:
        fail()
    except ConnectionError as exc:
        error = exc
    standard = "".join(traceback.format_exception(error))
    without_carets = "".join(
        line
        for line in standard.splitlines(keepends=True)
        if not line.strip() or line.strip(" ^~\n")  # blank lines stay, caret lines go
    )
    assert format_trace(error) == without_carets
    assert "direct cause" in without_carets and "During handling" in without_carets


def test_format_trace_keeps_the_innermost_frames_of_a_deep_recursion() -> None:
    def down(n: int) -> None:
        if n == 0:
            raise RuntimeError("bottom")
        down(n - 1)

    try:
        down(200)
    except RuntimeError as exc:
        trace = format_trace(exc)
    assert "outer frames omitted" in trace
    assert trace.count("in down") == MAX_FRAMES
    assert trace.endswith("RuntimeError: bottom\n")


class WarehouseError(Exception):
    pass


@pytest.mark.parametrize(
    "error",
    [
        ValueError("cannot reserve"),
        ValueError(),
        WarehouseError("503 from the warehouse"),
        SyntaxError("bad", ("handlers.py", 3, 5, "x = = 1\n")),
    ],
    ids=["builtin", "no-message", "own-class", "syntax-error"],
)
def test_format_trace_names_the_error_as_the_traceback_module_does(error: Exception) -> None:
    error.add_note("while reserving order o-1")
    try:
        raise error
    except Exception as exc:
        raised = exc
    expected = "".join(traceback.format_exception_only(raised))
    assert format_trace(raised).endswith(expected)


def test_format_trace_shows_the_sub_exceptions_of_an_exception_group() -> None:
    def reserve() -> None:
        raise ValueError("sku-1 is out of stock")

    try:
        try:
            reserve()
        except ValueError as exc:
            raise ExceptionGroup("unhandled errors in a TaskGroup", [exc]) from None
    except ExceptionGroup as group:
        trace = format_trace(group)
    assert "ValueError: sku-1 is out of stock" in trace
    assert "in reserve" in trace
