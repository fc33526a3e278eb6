"""When a schedule fires: pure functions, no I/O, so every replica computes the same instants.

- `every:` instants are aligned to the Unix epoch (``every: 15m`` fires at :00, :15, :30, :45
  UTC), whatever the time zone and whenever a replica started.
- `cron:` instants are wall-clock times in the schedule's time zone. A wall time that does not
  exist (the hour skipped when clocks go forward) fires when the clocks have moved on, i.e.
  shifted by the gap; a wall time that happens twice (clocks go back) fires once, at its first
  occurrence, unless the hour field is ``*``, where both occurrences fire (as cron does).
- Every firing has a deterministic event id, ``schedule:<name>:<instant in UTC>``, so two
  leaders firing the same instant during a failover produce one effect downstream.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from bus.durations import label
from bus.topology.model import Schedule

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A leader change loses nothing when it completes within this window: the new leader fires the
# instants its predecessor did not (its own `catch_up:` may be longer).
HANDOVER_MS = 60_000
# At most this many missed firings per schedule are caught up, the most recent ones.
MAX_CATCH_UP = 100
# Larger than any clock change of a time zone, so a scan that starts this early in wall-clock
# time cannot miss an instant shifted by a DST gap.
_SLACK = timedelta(hours=3)
_US = timedelta(microseconds=1)


def event_id(name: str, at: datetime) -> str:
    """``schedule:<name>:<at in UTC, ISO 8601>``, e.g. ``schedule:nightly:2026-11-27T02:00:00Z``."""
    return f"schedule:{name}:{instant_text(at)}"


def instant_text(at: datetime) -> str:
    """*at* in UTC as ``2026-11-27T02:00:00Z`` (milliseconds only when there are some)."""
    u = _utc(at)
    text = u.strftime("%Y-%m-%dT%H:%M:%S")
    ms = u.microsecond // 1000
    return f"{text}.{ms:03d}Z" if ms else f"{text}Z"


def next_firing(schedule: Schedule, after: datetime) -> datetime:
    """The first instant of *schedule* strictly after *after* (UTC)."""
    after = _utc(after)
    if schedule.every_ms is not None:
        return _next_every(schedule.every_ms, after)
    if schedule.cron is None:
        raise ValueError(f"schedule {schedule.name!r} has neither cron nor every")
    tz = ZoneInfo(schedule.timezone)
    best: datetime | None = None
    best_wall: datetime | None = None
    for wall in _walls(schedule.cron, _wall(after, tz) - _SLACK):
        if best_wall is not None and wall > best_wall + _SLACK:
            break  # every later wall time maps to a later instant
        for at in _instants(wall, tz, _hour_is_wildcard(schedule.cron)):
            if at > after and (best is None or at < best):
                best, best_wall = at, wall
    if best is None:  # pragma: no cover - the loop only ends once a best exists
        raise ValueError(f"schedule {schedule.name!r} never fires")
    return best


def next_firings(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    """The next *count* instants of *schedule* after *after*."""
    out: list[datetime] = []
    at = _utc(after)
    for _ in range(count):
        at = next_firing(schedule, at)
        out.append(at)
    return out


def firings_between(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    """Instants of *schedule* in ``(start, end]``, oldest first."""
    start, end = _utc(start), _utc(end)
    if end <= start:
        return []
    if schedule.every_ms is not None:
        step = schedule.every_ms * 1000
        first = _us(start) // step + 1
        last = _us(end) // step
        return [EPOCH + timedelta(microseconds=k * step) for k in range(first, last + 1)]
    if schedule.cron is None:
        raise ValueError(f"schedule {schedule.name!r} has neither cron nor every")
    tz = ZoneInfo(schedule.timezone)
    wildcard = _hour_is_wildcard(schedule.cron)
    stop_wall = _wall(end, tz) + _SLACK
    found: set[datetime] = set()
    for wall in _walls(schedule.cron, _wall(start, tz) - _SLACK):
        if wall > stop_wall:
            break
        found.update(at for at in _instants(wall, tz, wildcard) if start < at <= end)
    return sorted(found)


def due(
    schedule: Schedule,
    last: datetime | None,
    now: datetime,
    *,
    handover_ms: int = HANDOVER_MS,
    limit: int = MAX_CATCH_UP,
) -> list[datetime]:
    """The instants to fire at *now*, oldest first.

    *last* is the latest instant already handled (fired by this or a previous leader), or None
    when nothing is known. An instant is fired when it is after *last*, not after *now*, and at
    most ``catch_up`` old; when *last* is known (a leader change, or a late wake-up) at most
    ``max(catch_up, handover)`` old. Older ones are skipped; of the rest, the *limit* most recent.
    """
    now = _utc(now)
    window = schedule.catch_up_ms or 0
    if last is not None:
        window = max(window, handover_ms)
    # `- 1µs`: an instant exactly `window` old still counts
    start = now - timedelta(milliseconds=window) - _US
    if last is not None:
        start = max(start, _utc(last))
    return firings_between(schedule, start, now)[-limit:] if limit > 0 else []


def describe(schedule: Schedule) -> str:
    """One line saying when *schedule* fires, e.g. ``cron "0 2 * * *" (UTC)`` or ``every 15m``."""
    if schedule.every_ms is not None:
        return f"every {label(schedule.every_ms)}"
    return f'cron "{schedule.cron}" ({schedule.timezone})'


def _next_every(every_ms: int, after: datetime) -> datetime:
    step = every_ms * 1000
    return EPOCH + timedelta(microseconds=(_us(after) // step + 1) * step)


def _walls(expr: str, start: datetime) -> Iterator[datetime]:
    """Naive wall-clock times matching *expr*, strictly after *start*."""
    it = croniter(expr, start)
    while True:
        try:
            wall = it.get_next(datetime)
        except ValueError:  # croniter gives up after years of no match, e.g. "0 0 30 2 *"
            raise ValueError(f'cron "{expr}" matches no date after {start:%Y-%m-%d}') from None
        if not isinstance(wall, datetime):  # pragma: no cover - croniter returns what we ask
            raise TypeError("croniter returned no datetime")
        yield wall


def _instants(wall: datetime, tz: ZoneInfo, both_folds: bool) -> list[datetime]:
    """The UTC instants a naive wall-clock time stands for in *tz*."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if not both_folds:
        return [first]  # a skipped wall time maps past the gap; a repeated one to its first
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    repeated = second != first and _wall(second, tz) == wall and _wall(first, tz) == wall
    return [first, second] if repeated else [first]


def _hour_is_wildcard(expr: str) -> bool:
    fields = expr.split()
    return len(fields) > 1 and fields[1] == "*"


def _wall(at: datetime, tz: ZoneInfo) -> datetime:
    return at.astimezone(tz).replace(tzinfo=None, fold=0)


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError(f"{at.isoformat()} has no time zone: give an aware datetime")
    return at.astimezone(UTC)


def _us(at: datetime) -> int:
    return (at - EPOCH) // _US
