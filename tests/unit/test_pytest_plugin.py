"""The `testbus` fixture of the installed plugin, in a project of its own: its topology comes from
the ini option `bus_topology`, else `BUS_TOPOLOGY`, and its routers from `handlers:`."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TOPOLOGY = """\
version: 1
exchanges:
  billing: {type: topic}
events:
  invoice.issued:
    exchange: billing
    schema: {type: object, required: [invoice_id], properties: {invoice_id: {type: string}}}
subscribers:
  ledger:
    handlers: ledger_handlers:router
    bindings:
      - {exchange: billing, keys: ["invoice.#"]}
"""

HANDLERS = """\
import os
from pathlib import Path

from bus import Context, Router

router = Router()
booked = []


@router.on_shutdown
async def closed() -> None:
    Path(os.environ["SHUTDOWN_MARK"]).write_text("closed")


@router.on("invoice.issued")
async def book(invoice: dict, ctx: Context) -> None:
    booked.append(invoice["invoice_id"])
"""

TEST = """\
import pytest

import ledger_handlers
from bus.errors import InvalidEvent


async def test_the_fixture_runs_the_projects_handlers(testbus):
    await testbus.publish("invoice.issued", {"invoice_id": "i-1"}, id="op-1")
    await testbus.settle()
    assert ledger_handlers.booked == ["i-1"]
    assert [h.id for h in testbus.handled("ledger")] == ["op-1"]
    with pytest.raises(InvalidEvent):
        await testbus.publish("invoice.issued", {})
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(ledger_handlers=HANDLERS, test_ledger=TEST)
    pytester.mkdir("config")
    (pytester.path / "config" / "bus.yaml").write_text(TOPOLOGY)
    pytester.syspathinsert()
    monkeypatch.setenv("SHUTDOWN_MARK", str(pytester.path / "shutdown.mark"))
    return pytester


def test_the_ini_option_names_the_topology(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nasyncio_mode = auto\nbus_topology = config/bus.yaml\n")
    project.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_without_the_ini_option_bus_topology_names_it(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makeini("[pytest]\nasyncio_mode = auto\n")
    monkeypatch.setenv("BUS_TOPOLOGY", "config/bus.yaml")
    project.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_fixture_is_left_as_async_with_leaves_it_running_the_shutdown_hooks(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark = project.path / "shutdown.mark"
    monkeypatch.setenv("SHUTDOWN_MARK", str(mark))
    project.makeini("[pytest]\nasyncio_mode = auto\nbus_topology = config/bus.yaml\n")
    project.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert mark.read_text() == "closed"


def test_the_ini_option_is_relative_to_the_ini_file_not_the_working_directory(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makeini(
        "[pytest]\nasyncio_mode = auto\nbus_topology = config/bus.yaml\npythonpath = .\n"
    )
    sub = project.mkdir("elsewhere")
    monkeypatch.chdir(sub)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", str(project.path))
    result.assert_outcomes(passed=1)


def test_bus_topology_relative_to_the_root_is_found_from_a_subfolder(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makeini("[pytest]\nasyncio_mode = auto\npythonpath = .\n")
    monkeypatch.setenv("BUS_TOPOLOGY", "config/bus.yaml")  # as `bus run` gets it, from the root
    monkeypatch.chdir(project.mkdir("elsewhere"))
    result = project.runpytest_subprocess("-p", "no:cacheprovider", str(project.path))
    result.assert_outcomes(passed=1)


def test_a_missing_topology_fails_the_test_with_its_path(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nasyncio_mode = auto\nbus_topology = nowhere.yaml\n")
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*nowhere.yaml*"])


ONLY_LEDGER = """\
import pytest

import ledger_handlers


@pytest.mark.testbus(subscribers=["ledger"])
async def test_only_the_named_subscriber_runs(testbus):
    await testbus.publish("invoice.issued", {"invoice_id": "i-2"}, id="op-2")
    await testbus.settle()
    assert ledger_handlers.booked == ["i-2"]
    assert testbus.handled("mailer") == []
"""


def test_the_testbus_marker_loads_only_the_subscribers_it_names(
    project: pytest.Pytester,
) -> None:
    # a second subscriber whose handlers module does not exist: loading it would fail the test
    topology = TOPOLOGY + (
        "  mailer:\n    handlers: mailer_handlers:router\n"
        '    bindings:\n      - {exchange: billing, keys: ["invoice.#"]}\n'
    )
    (project.path / "config" / "bus.yaml").write_text(topology)
    (project.path / "test_ledger.py").unlink()
    project.makepyfile(test_only_ledger=ONLY_LEDGER)
    project.makeini("[pytest]\nasyncio_mode = auto\nbus_topology = config/bus.yaml\n")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=1)
