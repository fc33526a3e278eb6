"""The retry policy: which attempt failed and how -> what happens to the message next.

Pure logic. The subscriber runtime carries the decision out (republish, then ack).
"""

from __future__ import annotations

import linecache
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from bus.topology.model import Subscriber

MAX_STACKTRACE = 8 * 1024
MAX_MESSAGE = 1024
MAX_FRAMES = 64  # per exception of a chain: the innermost ones, where the error is

ATTEMPT = "bus-attempt"
DEAD_REASON = "bus-dead-reason"
FIRST_FAILED_AT = "bus-first-failed-at"
FAILED_AT = "bus-failed-at"
SUBSCRIBER = "bus-subscriber"
HANDLER = "bus-handler"
EXCEPTION_TYPE = "bus-exception-type"
EXCEPTION_MESSAGE = "bus-exception-message"
EXCEPTION_STACKTRACE = "bus-exception-stacktrace"
ORIGINAL_EXCHANGE = "bus-original-exchange"
ORIGINAL_ROUTING_KEY = "bus-original-routing-key"

FAILURE_HEADERS = (
    DEAD_REASON, FIRST_FAILED_AT, FAILED_AT, SUBSCRIBER, HANDLER, EXCEPTION_TYPE,
    EXCEPTION_MESSAGE, EXCEPTION_STACKTRACE,
)  # fmt: skip


class DeadReason(StrEnum):
    RETRIES_EXHAUSTED = "retries-exhausted"
    REJECTED = "rejected"
    INVALID = "invalid"
    NO_HANDLER = "no-handler"
    NO_SAGA = "no-saga"  # an event for no saga instance that starts none
    DELIVERY_LIMIT = "delivery-limit"  # parked by the broker (quorum x-delivery-limit)


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Republish to `queue` (a `Q.retry.<delay>` queue); it returns to `Q` after `delay`."""

    queue: str
    delay: str
    next_attempt: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Park in `Q.dlq` for a human."""

    queue: str
    reason: DeadReason


Decision = RetryLater | DeadLetter


def attempt_of(headers: Mapping[str, Any] | None) -> int:
    """The delivery's attempt number from our own `bus-attempt` header (never from x-death)."""
    value = (headers or {}).get(ATTEMPT, 1)
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode(errors="replace")
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1


def after_failure(sub: Subscriber, attempt: int) -> Decision:
    """A handler raised on *attempt*: the next retry queue, or the DLQ once the ladder is done."""
    if attempt <= len(sub.delays):
        delay = sub.delays[attempt - 1]
        return RetryLater(sub.retry_queue(delay), delay, attempt + 1)
    return DeadLetter(sub.dlq, DeadReason.RETRIES_EXHAUSTED)


def dead(sub: Subscriber, reason: DeadReason) -> DeadLetter:
    return DeadLetter(sub.dlq, reason)


def _is_broker_header(name: str) -> bool:
    return name.startswith("x-death") or name.startswith(("x-first-death", "x-last-death"))


def failure_headers(
    original: Mapping[str, Any] | None,
    *,
    decision: Decision,
    attempt: int,
    subscriber: str,
    handler: str | None,
    error: BaseException | str,
    now: datetime,
    exchange: str,
    routing_key: str,
) -> dict[str, Any]:
    """Headers of the republished copy: the original's minus `x-death*`, plus the failure story.

    On a retry copy `bus-attempt` is the attempt it will be; on a DLQ copy, the attempts made.
    """
    headers = {k: v for k, v in (original or {}).items() if not _is_broker_header(k)}
    stamp = now.isoformat().replace("+00:00", "Z")
    headers.setdefault(FIRST_FAILED_AT, stamp)
    headers.setdefault(ORIGINAL_EXCHANGE, exchange)
    headers.setdefault(ORIGINAL_ROUTING_KEY, routing_key)
    headers[FAILED_AT] = stamp
    headers[SUBSCRIBER] = subscriber
    headers[HANDLER] = handler or ""
    if isinstance(error, BaseException):
        headers[EXCEPTION_TYPE] = (
            f"{type(error).__module__}.{type(error).__qualname__}".removeprefix("builtins.")
        )
        headers[EXCEPTION_MESSAGE] = _clip(str(error), MAX_MESSAGE)
        headers[EXCEPTION_STACKTRACE] = _clip(format_trace(error), MAX_STACKTRACE, keep_end=True)
    else:
        headers[EXCEPTION_TYPE] = "bus.InvalidMessage"
        headers[EXCEPTION_MESSAGE] = _clip(error, MAX_MESSAGE)
        headers[EXCEPTION_STACKTRACE] = ""
    if isinstance(decision, RetryLater):
        headers[ATTEMPT] = decision.next_attempt
        headers.pop(DEAD_REASON, None)
    else:
        headers[ATTEMPT] = attempt
        headers[DEAD_REASON] = str(decision.reason)
    return headers


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def format_trace(error: BaseException) -> str:
    """The stack trace as `traceback.format_exception` writes it (chained exceptions included),
    without Python 3.11's `^^^^` lines under each frame.

    Those re-parse the source line of every frame with `ast` on every failure: over half of a
    failure hand-off's CPU went there. A frame's source line comes from linecache as usual.
    """
    if _has_group(error):  # sub-exceptions are drawn as a tree: leave that to the stdlib
        return "".join(traceback.format_exception(error))
    blocks: list[str] = []
    exc: BaseException | None = error
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        blocks.append(_one_trace(exc))
        if exc.__cause__ is not None:
            blocks.append(_CAUSE)
            exc = exc.__cause__
        elif exc.__context__ is not None and not exc.__suppress_context__:
            blocks.append(_CONTEXT)
            exc = exc.__context__
        else:
            exc = None
    return "".join(reversed(blocks))


def _has_group(error: BaseException) -> bool:
    seen: set[int] = set()
    exc: BaseException | None = error
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, BaseExceptionGroup):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return False


def _one_trace(exc: BaseException) -> str:
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code, tb.tb_lineno))
        tb = tb.tb_next
    lines = ["Traceback (most recent call last):\n"] if frames else []
    if len(frames) > MAX_FRAMES:
        lines.append(f"  [{len(frames) - MAX_FRAMES} outer frames omitted]\n")
        frames = frames[-MAX_FRAMES:]
    for code, lineno in frames:
        lines.append(f'  File "{code.co_filename}", line {lineno}, in {code.co_name}\n')
        source = linecache.getline(code.co_filename, lineno).strip()
        if source:
            lines.append(f"    {source}\n")
    lines.append(_exception_only(exc))
    return "".join(lines)


def _exception_only(exc: BaseException) -> str:
    """`ValueError: message` (and any notes) as the traceback module writes it."""
    if isinstance(exc, SyntaxError):  # the only kind with a special layout
        return "".join(traceback.format_exception_only(exc))
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("__main__", "builtins"):
        name = f"{kind.__module__}.{name}"
    try:
        text = str(exc)
    except Exception:
        text = "<exception str() failed>"
    line = f"{name}: {text}\n" if text else f"{name}\n"
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list | tuple):
        line += "".join(f"{note}\n" for note in notes)
    return line


def replay_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Headers of a message replayed from the DLQ: the attempt count starts again."""
    out = {k: v for k, v in (headers or {}).items() if not _is_broker_header(k)}
    for name in (*FAILURE_HEADERS, ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY):
        out.pop(name, None)
    out[ATTEMPT] = 1
    return out


def _clip(text: str, limit: int, *, keep_end: bool = False) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    marker = "…[truncated]…"
    room = limit - len(marker.encode())
    if keep_end:  # the end of a stack trace is where the error is
        return marker + data[-room:].decode(errors="ignore")
    return data[:room].decode(errors="ignore") + marker
