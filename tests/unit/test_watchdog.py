"""The consumer_timeout watchdog: warns once per delivery past half of consumer_timeout."""

from __future__ import annotations

import logging

import pytest

from bus.consume.watchdog import Watchdog


def test_warns_once_for_a_delivery_running_past_half_the_consumer_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = {(1, 7)}
    dog = Watchdog("email", 1800.0, lambda: set(running))
    assert dog.interval == 45.0
    assert dog.check(0.0) == 0
    assert dog.check(899.0) == 0, "not yet half of 30m"
    running.add((1, 8))  # a second delivery starts late: it is not late yet
    with caplog.at_level(logging.WARNING, logger="bus.consume.watchdog"):
        assert dog.check(900.0) == 1
    assert dog.check(1000.0) == 0, "warned once only"
    (record,) = caplog.records
    assert "a handler has run for over 15m, half of the broker's consumer_timeout (30m)" in (
        record.getMessage()
    )
    assert "email declares no `timeout`" in record.getMessage()
    running.clear()
    assert dog.check(1001.0) == 0 and dog._first_seen == {}, "finished deliveries are forgotten"
