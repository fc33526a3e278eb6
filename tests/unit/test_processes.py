"""`bus run --processes N`: the parent's pure decisions, and `processes:` in the topology."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from bus.consume.processes import (
    FIRST_PAUSE,
    MAX_PAUSE,
    YOUNG,
    child_env,
    next_pause,
    why_it_ended,
)
from bus.errors import TopologyError
from bus.settings import Settings
from bus.topology.model import from_dict
from tests.integration.helpers import topology_doc


def test_a_child_end_says_its_exit_code_or_signal() -> None:
    assert why_it_ended(1) == "exit code 1"
    assert why_it_ended(-signal.SIGKILL) == "killed by SIGKILL"
    assert why_it_ended(-signal.SIGSEGV) == "killed by SIGSEGV"


def test_a_child_that_dies_young_waits_longer_each_time_up_to_a_bound() -> None:
    pauses = []
    pause = 0.0
    for _ in range(8):
        pause = next_pause(pause, lived=1.0)
        pauses.append(pause)
    assert pauses[0] == FIRST_PAUSE
    assert pauses == sorted(pauses)
    assert pauses[-1] == MAX_PAUSE


def test_a_child_that_ran_a_while_restarts_at_once() -> None:
    assert next_pause(MAX_PAUSE, lived=YOUNG + 1) == 0.0


def test_children_get_the_resolved_settings_and_never_the_metrics_port(tmp_path: Path) -> None:
    s = Settings(url="amqp://u:p@h:5672/", topology="/t.yaml", store_url="memory://")
    env = child_env(s, 7.0, tmp_path, {"BUS_METRICS_PORT": "9100", "HOME": "/h"})
    assert "BUS_METRICS_PORT" not in env
    assert env["HOME"] == "/h"
    assert env["BUS_URL"] == "amqp://u:p@h:5672/"
    assert env["BUS_TOPOLOGY"] == "/t.yaml"
    assert env["BUS_STORE_URL"] == "memory://"
    assert env["BUS_GRACE_PERIOD"] == "7.0"
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)


def test_processes_in_the_topology_defaults_to_one() -> None:
    doc = topology_doc("p", {"a": {}, "b": {"processes": 4}})
    t = from_dict(doc)
    assert t.subscriber("a").processes == 1
    assert t.subscriber("b").processes == 4


def test_processes_must_be_at_least_one() -> None:
    with pytest.raises(TopologyError) as info:
        from_dict(topology_doc("p", {"a": {"processes": 0}}))
    assert any("processes" in p for p in info.value.problems), info.value.problems
