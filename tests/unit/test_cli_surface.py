"""The command line people expect, without a broker: --version, completion, --help that names
every option's variable and default, validate importing the handlers, a demo prefix per run."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from rich.console import Console

from bus.cli import app
from bus.topology.diff import Action, Step
from bus.topology.plan import BindingDecl

REPO = Path(__file__).resolve().parents[2]
# options backed by a variable of the configuration reference (docs/reference/configuration.md)
ENV_OF = {
    "--url": "BUS_URL", "--topology": "BUS_TOPOLOGY", "--store-url": "BUS_STORE_URL",
    "--outbox-url": "BUS_OUTBOX_URL", "--metrics-port": "BUS_METRICS_PORT",
    "--grace-period": "BUS_GRACE_PERIOD", "--lock-queue": "BUS_SCHEDULER_LOCK",
    "--log-format": "BUS_LOG_FORMAT", "--log-level": "BUS_LOG_LEVEL",
}  # fmt: skip


def bus(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", *args], cwd=cwd, env=clean | (env or {}),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def commands() -> Iterator[tuple[str, Any]]:
    def walk(command: Any, path: str) -> Iterator[tuple[str, Any]]:
        yield path, command
        for name, sub in (getattr(command, "commands", None) or {}).items():
            yield from walk(sub, f"{path} {name}")

    yield from walk(typer.main.get_command(app), "bus")


def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    done = bus("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"bus {version('bus')}"


def test_shell_completion_can_be_shown_and_installed() -> None:
    names = {opt for p in typer.main.get_command(app).params for opt in p.opts}
    assert {"--install-completion", "--show-completion"} <= names


def test_every_option_names_its_default_and_its_environment_variable() -> None:
    missing = []
    for path, command in commands():
        for p in command.params:
            if p.param_type_name != "option" or p.name == "help" or p.is_flag or p.required:
                continue  # flags are off unless given; required options have no default
            text = p.help or ""
            shown = p.show_default is not False and p.default not in (None, [], ())
            if not shown and "(default:" not in text:
                missing.append(f"{path} {p.opts[0]}: no default")
            env = ENV_OF.get(p.opts[0])
            if env and p.envvar != env:
                missing.append(f"{path} {p.opts[0]}: does not name {env}")
    assert not missing, "\n".join(missing)


def test_help_shows_the_variable_and_the_default_to_a_reader() -> None:
    done = bus("publish", "--help", env={"COLUMNS": "200"})
    assert done.returncode == 0
    for text in ("BUS_URL", "BUS_TOPOLOGY", "(default: topology/topology.yaml)",
                 "(default: a random one)", "--correlation-id", "@FILE"):  # fmt: skip
        assert text in done.stdout, f"{text!r} missing from:\n{done.stdout}"


def test_plan_lines_keep_the_routing_keys_of_bindings(monkeypatch: pytest.MonkeyPatch) -> None:
    from bus.cli import topology as cli_topology

    out = io.StringIO()
    monkeypatch.setattr(cli_topology, "console", Console(file=out, width=200))
    steps = [
        Step(Action.CREATE, BindingDecl("email", "events", "order.placed")),
        Step(Action.CREATE, BindingDecl("email", "events", "order.shipped")),
    ]
    cli_topology._report(steps, "plan")
    assert "binding events -> email [order.placed]" in out.getvalue()
    assert "binding events -> email [order.shipped]" in out.getvalue()


@pytest.fixture
def broken_service(tmp_path: Path) -> Path:
    """A topology whose two subscribers' handlers fail to import in two different ways."""
    (tmp_path / "svc_syntax.py").write_text("from bus import Router\nrouter = Router(\n")
    (tmp_path / "svc_raises.py").write_text("import json\n\nrouter = json.loads('nope')\n")
    doc = yaml.safe_load((REPO / "topology/topology.yaml").read_text())
    doc["subscribers"]["email"]["handlers"] = "svc_syntax:router"
    doc["subscribers"]["analytics"]["handlers"] = "svc_raises:router"
    doc["subscribers"]["fulfillment"]["handlers"] = "svc_absent:router"
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


def test_validate_imports_every_handlers_module_and_reports_all_failures_at_once(
    broken_service: Path,
) -> None:
    # the other subscribers' handlers are this checkout's (not installed): importable from here
    checkout = {"PYTHONPATH": str(REPO)}
    done = bus("topology", "validate", "-t", "topology.yaml", cwd=broken_service, env=checkout)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "topology.yaml: 3 problems" in done.stderr
    for expected in (
        "subscribers.email.handlers: cannot import svc_syntax:router: SyntaxError: '(' was never closed",
        "subscribers.analytics.handlers: cannot import svc_raises:router: JSONDecodeError",
        "subscribers.fulfillment.handlers: cannot import svc_absent:router: ModuleNotFoundError",
    ):
        assert expected in done.stderr, f"{expected!r} missing from:\n{done.stderr}"
    assert "svc_syntax.py, line 2" in done.stderr and "svc_raises.py, line 3" in done.stderr


def test_validate_no_import_checks_the_file_alone(broken_service: Path) -> None:
    done = bus("topology", "validate", "--no-import", "-t", "topology.yaml", cwd=broken_service)
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout


def test_validate_imports_the_real_handlers() -> None:
    done = bus("topology", "validate")
    assert done.returncode == 0, done.stderr


def test_each_demo_run_gets_a_prefix_of_its_own() -> None:
    from bus.cli.demo import _PREFIX, run_prefix

    prefixes = {run_prefix() for _ in range(50)}
    assert len(prefixes) == 50
    assert all(p.startswith("demo-") and _PREFIX.match(p) for p in prefixes)


def test_a_flag_takes_no_value_and_its_help_shows_none() -> None:
    for args in (("topology", "plan", "--help"), ("topology", "apply", "--help"),
                 ("dlq", "replay", "--help")):  # fmt: skip
        done = bus(*args)
        assert done.returncode == 0, done.stderr
        assert "<bool>" not in done.stdout, f"`bus {' '.join(args)}` shows <bool>:\n{done.stdout}"


def test_the_readme_does_not_call_publish_delay_unbuilt() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "--delay" in bus("publish", "--help").stdout
    assert "delayed publish is not built" not in readme, "the README says --delay is not built"
