"""bus.durations: the duration syntax of the topology file (250ms, 30s, 5m, 1h, 1d)."""

from __future__ import annotations

from typing import Any

import pytest

from bus.durations import label, normalise, parse_ms


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("250ms", 250),
        ("30s", 30_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("1d", 86_400_000),
        (" 2m ", 120_000),
    ],
)
def test_parse_ms_converts_each_unit_to_milliseconds(text: str, ms: int) -> None:
    assert parse_ms(text) == ms


@pytest.mark.parametrize(
    ("ms", "expected"),
    [(250, "250ms"), (1_000, "1s"), (60_000, "1m"), (90_000, "90s"), (3_600_000, "1h"),
     (86_400_000, "1d"), (1_500, "1500ms")],
)  # fmt: skip
def test_label_uses_the_largest_unit_that_divides_the_duration(ms: int, expected: str) -> None:
    assert label(ms) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("60s", "1m"), ("60m", "1h"), ("24h", "1d"), ("1000ms", "1s"), ("5m", "5m")],
)
def test_normalise_rewrites_a_duration_in_its_largest_unit(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize("text", ["5 minutes", "0s", "", "1.5m", "10", "m", "-1s", "1w"])
def test_parse_ms_rejects_text_that_is_not_a_positive_duration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration") as info:
        parse_ms(text)
    assert f'"{text}"' in str(info.value), "the message quotes the offending text"


@pytest.mark.parametrize("value", [5, None, 1.5, ["1m"]])
def test_parse_ms_rejects_values_that_are_not_strings(value: Any) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_ms(value)


def test_normalise_rejects_what_parse_ms_rejects() -> None:
    with pytest.raises(ValueError, match='"5 minutes" is not a duration'):
        normalise("5 minutes")
