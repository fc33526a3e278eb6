"""The `bus` command line without a broker: exit codes and one-line errors (never a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Nothing listens on port 1: a command that needs the broker fails at once, none reaches one.
NO_BROKER = "amqp://guest:s3cret@127.0.0.1:1/"

BAD_TOPOLOGY = """\
version: 1
exchanges:
  events: {type: topic}
events:
  order.placed: {exchange: events}
subscribers:
  email:
    handlers: subscribers.email.handlers:router
    bindings:
      - {exchange: events, keys: [order.placed]}
      - {exchange: orders, keys: [order.placed]}
    retry: {delays: [1m, "5 minutes"]}
  audit:
    handlers: audit.handlers:router
    bindings:
      - {exchange: events, keys: [invoice.*]}
"""


@dataclass
class Result:
    code: int
    out: str
    err: str


LONG_TIMEOUT_TOPOLOGY = """\
version: 1
exchanges:
  events: {type: topic}
events:
  order.placed: {exchange: events}
subscribers:
  email:
    handlers: subscribers.email.handlers:router
    bindings:
      - {exchange: events, keys: [order.placed]}
    timeout: 30m
"""


def commands(bad_topology: Path, absent: Path) -> dict[str, tuple[str, ...]]:
    """Every command this module runs, by name."""
    long_timeout = bad_topology.with_name("long-timeout.yaml")
    return {
        "run-timeout-at-consumer-timeout": ("run", "email", "-t", str(long_timeout)),
        "run-timeout-below-a-raised-consumer-timeout": (
            "run",
            "email",
            "-t",
            str(long_timeout),
            "--consumer-timeout",
            "1h",
        ),
        "validate": ("topology", "validate"),
        "validate-bad": ("topology", "validate", "--topology", str(bad_topology)),
        "validate-absent": ("topology", "validate", "-t", str(absent)),
        "publish-undeclared": ("publish", "order.exploded", "--data", "{}"),
        "publish-bad-delay": ("publish", "order.placed", "--data", "{}", "--delay", "3 days"),
        "publish-not-json": ("publish", "order.placed", "--data", "{order_id: o-1}"),
        "status": ("status",),
        "unknown-command": ("frobnicate",),
        "missing-data": ("publish", "order.placed"),
        "drop-without-prune": ("topology", "apply", "--drop-messages"),
    }


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    """Run every command at once (each pays Python's start-up) and keep what they said."""
    tmp = tmp_path_factory.mktemp("cli")
    bad = tmp / "bad.yaml"
    bad.write_text(BAD_TOPOLOGY, encoding="utf-8")
    (tmp / "long-timeout.yaml").write_text(LONG_TIMEOUT_TOPOLOGY, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    env |= {"BUS_URL": NO_BROKER, "BUS_STORE_URL": "memory://"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "bus.cli", *args],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, args in commands(bad, tmp / "absent.yaml").items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        results[name] = Result(proc.returncode, out, err.replace(str(bad), "BAD"))
    return results


def assert_one_line_error(result: Result) -> str:
    assert "Traceback" not in result.err, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.err}"
    return lines[0]


def test_validate_accepts_the_real_topology(ran: dict[str, Result]) -> None:
    result = ran["validate"]
    assert result.code == 0, result.err
    assert result.out.startswith("topology/topology.yaml: valid")


def test_validate_reports_all_three_problems_and_exits_2(ran: dict[str, Result]) -> None:
    result = ran["validate-bad"]
    assert result.code == 2, result.err
    assert "Traceback" not in result.err
    assert "error: BAD: 3 problems" in result.err
    for expected in (
        'subscribers.email.retry.delays[1]: "5 minutes" is not a duration',
        "subscribers.email.bindings[1].exchange: exchange 'orders' is not declared",
        "subscribers.audit.bindings[0].keys[0]: 'invoice.*' matches no event type",
    ):
        assert expected in result.err, f"missing {expected!r} in:\n{result.err}"


def test_validate_of_a_missing_file_exits_2_with_one_line(ran: dict[str, Result]) -> None:
    result = ran["validate-absent"]
    assert result.code == 2
    assert "cannot read" in result.err and "Traceback" not in result.err


def test_publish_of_an_undeclared_type_exits_2_with_one_line(ran: dict[str, Result]) -> None:
    result = ran["publish-undeclared"]
    assert result.code == 2, result.err
    line = assert_one_line_error(result)
    assert "'order.exploded' is not declared" in line


def test_publish_with_data_that_is_not_json_exits_2_with_one_line(ran: dict[str, Result]) -> None:
    result = ran["publish-not-json"]
    assert result.code == 2
    assert assert_one_line_error(result).startswith("error: --data is not JSON")


def test_status_with_an_unreachable_broker_exits_1_naming_the_redacted_url(
    ran: dict[str, Result],
) -> None:
    result = ran["status"]
    assert result.code == 1, result.err
    line = assert_one_line_error(result)
    assert "amqp://guest:***@127.0.0.1:1/" in line
    assert "s3cret" not in result.err + result.out


@pytest.mark.parametrize("name", ["unknown-command", "missing-data", "drop-without-prune"])
def test_usage_error_exits_2_without_a_traceback(ran: dict[str, Result], name: str) -> None:
    result = ran[name]
    assert "Traceback" not in result.err, result.err
    assert result.code == 2


def test_run_refuses_a_timeout_not_below_the_consumer_timeout_with_exit_2(
    ran: dict[str, Result],
) -> None:
    r = ran["run-timeout-at-consumer-timeout"]
    assert r.code == 2, r
    assert "timeout 30m is not below the broker's consumer_timeout (30m)" in r.err, r.err
    assert "Traceback" not in r.err


def test_run_accepts_that_timeout_below_a_raised_consumer_timeout(ran: dict[str, Result]) -> None:
    r = ran["run-timeout-below-a-raised-consumer-timeout"]
    assert r.code == 1, r  # past the check: it fails only at connecting to no broker
    assert "consumer_timeout" not in r.err and "127.0.0.1:1" in r.err, r.err


def test_publish_with_a_delay_that_is_not_a_duration_exits_2_with_one_line(
    ran: dict[str, Result],
) -> None:
    r = ran["publish-bad-delay"]
    assert r.code == 2, r
    assert '--delay: "3 days" is not a duration' in r.err, r.err
    assert "Traceback" not in r.err


def test_outside_a_checkout_the_cli_works(tmp_path: Path) -> None:
    """The package installs the library alone: `demo/` is the checkout's, imported on use."""
    bus = Path(sys.executable).with_name("bus")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")} | {"BUS_URL": NO_BROKER}
    helped = subprocess.run(
        [bus, "--help"], cwd=tmp_path, env=env, text=True, capture_output=True, timeout=60
    )
    assert helped.returncode == 0, helped.stderr
    assert "demo" in helped.stdout


def test_bus_demo_without_a_checkout_says_where_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bus
    from bus.cli import demo
    from bus.errors import ConfigError

    monkeypatch.chdir(tmp_path)  # not a checkout, and bus installed from a wheel:
    monkeypatch.setattr(bus, "__file__", str(tmp_path / "site-packages" / "bus" / "__init__.py"))
    with pytest.raises(ConfigError, match="runs from a checkout of the bus repository"):
        demo._demo_flow()


def test_bus_demo_finds_the_checkout_from_a_folder_below_its_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bus
    from bus.cli import demo

    monkeypatch.chdir(REPO / "docs")  # inside a checkout, bus installed from a wheel
    monkeypatch.setattr(bus, "__file__", str(tmp_path / "site-packages" / "bus" / "__init__.py"))
    assert Path(demo._demo_flow().__file__ or "").resolve() == REPO / "demo" / "flow.py"
