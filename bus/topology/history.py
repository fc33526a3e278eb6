"""The topology's side of event history: an exchange's `history:` (its log's retention), the
log it makes (the stream `<exchange>.history`), and the check of a subscriber's `backfill:`
against the history its exchanges keep.

Below the model (`bus.topology.model` builds its `Topology` with these), above nothing but the
durations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict

from bus.durations import normalise, normalise_bytes, parse_bytes, parse_ms

DEFAULT_HISTORY_AGE = "7d"


class HistorySpec(BaseModel):
    """`exchanges.<name>.history`: the event log's retention; never unbounded (with neither
    limit given, events are kept `DEFAULT_HISTORY_AGE`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    max_age: Annotated[str, AfterValidator(normalise)] | None = None
    max_bytes: Annotated[str | int, AfterValidator(normalise_bytes)] | None = None  # 10GB, bytes


@dataclass(frozen=True, slots=True)
class History:
    """An exchange's event log: the stream `<exchange>.history` and its retention."""

    exchange: str
    max_age: str | None  # a normalised duration, e.g. "7d"
    max_bytes: int | None

    @property
    def stream(self) -> str:
        return history_stream(self.exchange)

    @property
    def max_age_ms(self) -> int | None:
        return parse_ms(self.max_age) if self.max_age else None


def history_stream(exchange: str) -> str:
    """The stream queue holding *exchange*'s history."""
    return f"{exchange}.history"


def history_of(exchange: str, spec: HistorySpec) -> History:
    """The history *spec* keeps for *exchange*, with the default age when it gives no limit."""
    age = spec.max_age if spec.max_age or spec.max_bytes else DEFAULT_HISTORY_AGE
    size = parse_bytes(spec.max_bytes) if spec.max_bytes is not None else None
    return History(exchange, age, size)


class _Doc(Protocol):
    """What the backfill check reads of the raw topology document."""

    @property
    def exchanges(self) -> Mapping[str, Any]: ...


def _label_or_none(text: str) -> str | None:
    try:
        return normalise(text)
    except ValueError:
        return None


def check_backfill(doc: _Doc, where: str, sub: Mapping[str, Any]) -> list[str]:
    """Problems of a subscriber's `backfill:` (raw, at *where*): each exchange it is bound to
    must keep a history, and at least as long as the backfill reaches back."""
    backfill = sub.get("backfill")
    if backfill is None or _label_or_none(str(backfill)) is None:
        return []  # a malformed duration is reported by the model
    bindings = sub.get("bindings", [])
    problems: list[str] = []
    for b in bindings if isinstance(bindings, list) else []:
        exchange = b.get("exchange") if isinstance(b, dict) else None
        if not isinstance(exchange, str) or exchange not in doc.exchanges:
            continue
        spec = doc.exchanges.get(exchange)
        history = spec.get("history") if isinstance(spec, dict) else None
        if not isinstance(history, dict):
            problems.append(
                f"{where}.backfill: exchange {exchange!r} keeps no history (add `history:` to it)"
            )
            continue
        kept = history.get("max_age")
        if kept is None and history.get("max_bytes") is None:
            kept = DEFAULT_HISTORY_AGE
        known = isinstance(kept, str) and _label_or_none(kept) is not None
        if known and parse_ms(str(backfill)) > parse_ms(str(kept)):
            problems.append(
                f"{where}.backfill: {backfill} is longer than the history kept on "
                f"exchange {exchange!r} ({kept})"
            )
    return list(dict.fromkeys(problems))
