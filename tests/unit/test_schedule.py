"""When schedules fire (bus.scheduling.firings) and what `bus scheduler --dry-run` prints. No network."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from typer.testing import CliRunner

from bus.cli import app
from bus.scheduling.firings import (
    HANDOVER_MS,
    due,
    event_id,
    firings_between,
    instant_text,
    next_firing,
    next_firings,
)
from bus.topology.model import Schedule, from_dict


def cron(expr: str, tz: str = "UTC", catch_up_ms: int | None = None) -> Schedule:
    return Schedule("job", "job.requested", expr, None, tz, {}, catch_up_ms)


def every(ms: int, catch_up_ms: int | None = None) -> Schedule:
    return Schedule("tick", "tick.requested", None, ms, "UTC", {}, catch_up_ms)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


def texts(instants: list[datetime]) -> list[str]:
    return [instant_text(a) for a in instants]


# -- ids ---------------------------------------------------------------------------------------


def test_event_id_names_the_schedule_and_the_instant_in_utc() -> None:
    at = datetime(2026, 11, 27, 3, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # 02:00 UTC
    assert event_id("nightly", at) == "schedule:nightly:2026-11-27T02:00:00Z"


def test_event_id_shows_milliseconds_only_when_there_are_some() -> None:
    assert event_id("t", utc(2026, 1, 1, 0, 0, 0, 250_000)) == "schedule:t:2026-01-01T00:00:00.250Z"


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        next_firing(every(1000), datetime(2026, 1, 1))


# -- every: ------------------------------------------------------------------------------------


def test_every_is_aligned_to_the_epoch_whenever_a_replica_starts() -> None:
    fifteen = every(15 * 60_000)
    assert texts(next_firings(fifteen, utc(2026, 5, 1, 10, 7, 13), 3)) == [
        "2026-05-01T10:15:00Z",
        "2026-05-01T10:30:00Z",
        "2026-05-01T10:45:00Z",
    ]
    assert next_firing(fifteen, utc(2026, 5, 1, 10, 14, 59)) == utc(2026, 5, 1, 10, 15)


def test_every_fires_strictly_after_the_given_instant() -> None:
    assert next_firing(every(1000), utc(2026, 5, 1, 0, 0, 1)) == utc(2026, 5, 1, 0, 0, 2)


def test_every_supports_sub_second_periods() -> None:
    assert texts(next_firings(every(250), utc(2026, 5, 1, 0, 0, 0, 100_000), 2)) == [
        "2026-05-01T00:00:00.250Z",
        "2026-05-01T00:00:00.500Z",
    ]


# -- cron: -------------------------------------------------------------------------------------


def test_cron_in_utc_fires_at_the_wall_time() -> None:
    assert texts(next_firings(cron("0 2 * * *"), utc(2026, 11, 26, 12), 2)) == [
        "2026-11-27T02:00:00Z",
        "2026-11-28T02:00:00Z",
    ]


def test_cron_in_a_time_zone_follows_its_offset_across_the_year() -> None:
    nine = cron("0 9 * * *", "America/New_York")
    assert next_firing(nine, utc(2026, 1, 10)) == utc(2026, 1, 10, 14)  # EST, UTC-5
    assert next_firing(nine, utc(2026, 7, 10)) == utc(2026, 7, 10, 13)  # EDT, UTC-4


def test_cron_wall_time_skipped_by_spring_forward_fires_after_the_gap() -> None:
    # Europe/Berlin 2026-03-29: 02:00 CET -> 03:00 CEST, so 02:30 does not exist
    s = cron("30 2 * * *", "Europe/Berlin")
    assert texts(next_firings(s, utc(2026, 3, 28, 12), 2)) == [
        "2026-03-29T01:30:00Z",  # 03:30 CEST: the skipped time, shifted by the gap
        "2026-03-30T00:30:00Z",  # 02:30 CEST
    ]


def test_cron_wall_time_repeated_by_fall_back_fires_once() -> None:
    # Europe/Berlin 2026-10-25: 03:00 CEST -> 02:00 CET, so 02:30 happens twice
    s = cron("30 2 * * *", "Europe/Berlin")
    assert texts(firings_between(s, utc(2026, 10, 24, 12), utc(2026, 10, 26, 12))) == [
        "2026-10-25T00:30:00Z",  # the first 02:30 (CEST) only
        "2026-10-26T01:30:00Z",
    ]


def test_cron_with_every_hour_fires_hourly_through_both_clock_changes() -> None:
    hourly = cron("0 * * * *", "Europe/Berlin")
    autumn = firings_between(hourly, utc(2026, 10, 24, 22, 30), utc(2026, 10, 25, 3, 30))
    hours = ["23:00", "00:00", "01:00", "02:00", "03:00"]  # one firing per UTC hour, no gap
    assert [instant_text(a)[11:16] for a in autumn] == hours
    spring = firings_between(hourly, utc(2026, 3, 28, 22, 30), utc(2026, 3, 29, 3, 30))
    assert [instant_text(a)[11:16] for a in spring] == hours


@pytest.mark.parametrize(
    ("schedule", "start"),
    [
        (cron("*/20 * * * *", "Europe/Berlin"), utc(2026, 10, 24, 21)),
        (cron("15 1-3 * * *", "Europe/Berlin"), utc(2026, 10, 24, 21)),
        (cron("15 1-3 * * *", "Europe/Berlin"), utc(2026, 3, 28, 21)),
        (every(7000), utc(2026, 3, 28, 21)),
    ],
)
def test_firings_between_agrees_with_repeated_next_firing(
    schedule: Schedule, start: datetime
) -> None:
    end = start + timedelta(hours=8)
    walked: list[datetime] = []
    at = start
    while (at := next_firing(schedule, at)) <= end:
        walked.append(at)
    assert firings_between(schedule, start, end) == walked
    assert walked == sorted(set(walked)), "instants must be increasing and unique"


def test_a_cron_that_never_matches_says_so() -> None:
    with pytest.raises(ValueError, match="matches no date"):
        next_firing(cron("0 0 30 2 *"), utc(2026, 1, 1))


# -- catch-up ----------------------------------------------------------------------------------


def test_on_a_fresh_start_without_catch_up_missed_firings_are_skipped() -> None:
    assert due(cron("0 2 * * *"), None, utc(2026, 11, 27, 2, 0, 5)) == []


def test_on_a_fresh_start_firings_within_catch_up_fire_oldest_first() -> None:
    hourly = cron("0 * * * *", catch_up_ms=3 * 3_600_000)
    assert texts(due(hourly, None, utc(2026, 11, 27, 10, 30))) == [
        "2026-11-27T08:00:00Z",
        "2026-11-27T09:00:00Z",
        "2026-11-27T10:00:00Z",
    ]


def test_an_instant_exactly_catch_up_old_still_fires() -> None:
    assert due(every(60_000, catch_up_ms=60_000), None, utc(2026, 1, 1, 0, 1)) == [
        utc(2026, 1, 1, 0, 0),
        utc(2026, 1, 1, 0, 1),
    ]


def test_a_new_leader_fires_what_its_predecessor_did_not_within_the_handover_window() -> None:
    last_fired = utc(2026, 1, 1, 0, 0, 10)
    assert due(every(1000), last_fired, utc(2026, 1, 1, 0, 0, 12, 300_000)) == [
        utc(2026, 1, 1, 0, 0, 11),
        utc(2026, 1, 1, 0, 0, 12),
    ]


def test_already_fired_instants_are_never_fired_again() -> None:
    last_fired = utc(2026, 1, 1, 0, 0, 12)
    assert due(every(1000), last_fired, utc(2026, 1, 1, 0, 0, 12, 900_000)) == []


def test_firings_missed_longer_ago_than_handover_and_catch_up_are_skipped() -> None:
    daily = cron("0 2 * * *")
    last_fired = utc(2026, 11, 25, 2)
    assert due(daily, last_fired, utc(2026, 11, 27, 9)) == []  # down for two days
    with_catch_up = cron("0 2 * * *", catch_up_ms=86_400_000)
    assert due(with_catch_up, last_fired, utc(2026, 11, 27, 9)) == [utc(2026, 11, 27, 2)]
    ms = HANDOVER_MS // 1000
    assert due(every(1000), utc(2026, 1, 1), utc(2026, 1, 1, 0, 5))[0] == utc(
        2026, 1, 1, 0, 4, 60 - ms
    )


def test_catch_up_is_bounded_to_the_most_recent_firings() -> None:
    fired = due(every(1000, catch_up_ms=3_600_000), None, utc(2026, 1, 1, 1), limit=3)
    assert fired == [utc(2026, 1, 1, 0, 59, 58), utc(2026, 1, 1, 0, 59, 59), utc(2026, 1, 1, 1)]


# -- bus scheduler --dry-run -------------------------------------------------------------------


def _doc(schedules: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1,
        "exchanges": {"events": {"type": "topic"}},
        "events": {"report.daily_requested": {"exchange": "events"}},
        "schedules": schedules,
    }


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`bus` points the root logger at CliRunner's stream, which is closed afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_dry_run_prints_the_next_firings_with_ids_and_needs_no_broker(tmp_path: Path) -> None:
    doc = _doc(
        {
            "daily-report": {"cron": "0 2 * * *", "event": "report.daily_requested"},
            "warmup": {
                "every": "15m",
                "event": "report.daily_requested",
                "timezone": "Europe/Paris",
            },
        }
    )
    from_dict(doc)  # the document itself is valid
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(
        app,
        ["scheduler", "--dry-run", "--count", "3", "--topology", str(path)],
        env={"BUS_URL": "amqp://guest:guest@127.0.0.1:1/"},  # nothing listens there
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == 'daily-report: report.daily_requested, cron "0 2 * * *" (UTC)'
    assert len([ln for ln in lines if "schedule:daily-report:" in ln]) == 3
    assert lines[4] == "warmup: report.daily_requested, every 15m"
    first = datetime.strptime(lines[5].split()[0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert first.minute % 15 == 0 and first.second == 0
    assert lines[5].split()[1] == f"schedule:warmup:{instant_text(first)}"


def test_dry_run_without_schedules_says_so(tmp_path: Path) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(_doc({})))
    result = CliRunner().invoke(app, ["scheduler", "--dry-run", "--topology", str(path)])
    assert result.exit_code == 0
    assert "no schedules" in result.output
