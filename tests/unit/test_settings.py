"""bus.settings: configuration from the environment, and URLs safe to show."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from bus.errors import ConfigError
from bus.settings import (
    DEFAULT_TOPOLOGY,
    DEFAULT_URL,
    Settings,
    broker_urls,
    redact,
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
        ("amqps://app:p%40ss@rabbit.example.com/prod", "amqps://app:***@rabbit.example.com/prod"),
        ("postgresql://bus:hunter2@db:5432/bus?sslmode=require",
         "postgresql://bus:***@db:5432/bus?sslmode=require"),
        ("amqp://:onlypass@host/", "amqp://:***@host/"),
    ],
)  # fmt: skip
def test_redact_hides_the_password(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    "url", ["amqp://localhost:5672/", "amqp://guest@localhost/", "memory://", "sqlite:///x.db"]
)
def test_redact_leaves_urls_without_a_password_alone(url: str) -> None:
    assert redact(url) == url


def test_redact_keeps_an_ipv6_host_usable() -> None:
    assert redact("amqp://guest:guest@[::1]:5672/") == "amqp://guest:***@[::1]:5672/"


def test_redact_never_echoes_an_unparseable_url() -> None:
    assert redact("amqp://user:secret@[::1") == "<unparseable url>"


def test_from_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BUS_URL", "BUS_TOPOLOGY", "BUS_STORE_URL"):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert (s.url, s.topology) == (DEFAULT_URL, DEFAULT_TOPOLOGY)
    assert (
        s.store_url == f"sqlite:///{Path(DEFAULT_TOPOLOGY).resolve().parent / '.bus/processed.db'}"
    )


def test_the_default_store_lives_beside_the_topology_file_whatever_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BUS_STORE_URL", raising=False)
    (tmp_path / "svc").mkdir()
    monkeypatch.chdir(tmp_path)
    here = Settings.from_env(topology="svc/topology.yaml")
    monkeypatch.chdir(tmp_path / "svc")
    there = Settings.from_env(topology="topology.yaml")
    assert here.store_url == there.store_url == f"sqlite:///{tmp_path / 'svc/.bus/processed.db'}"
    monkeypatch.setenv("BUS_STORE_URL", "memory://")
    assert Settings.from_env(topology="topology.yaml").store_url == "memory://"


def test_from_env_reads_the_environment_and_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_URL", "amqps://u:p@rabbit/")
    monkeypatch.setenv("BUS_TOPOLOGY", "env.yaml")
    monkeypatch.setenv("BUS_STORE_URL", "memory://")
    s = Settings.from_env(topology="cli.yaml", url=None)
    assert (s.url, s.topology, s.store_url) == ("amqps://u:p@rabbit/", "cli.yaml", "memory://")


@pytest.mark.parametrize("url", ["http://guest:topsecret@localhost:15672/", "localhost:5672", ""])
def test_from_env_rejects_urls_that_are_not_amqp_with_a_config_error(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("BUS_URL", url)
    with pytest.raises(ConfigError, match="BUS_URL must be amqp:// or amqps://") as info:
        Settings.from_env()
    assert "\n" not in str(info.value), "one line"
    assert "topsecret" not in str(info.value), "the rejected URL is named redacted"


def test_rejected_url_password_appears_nowhere_in_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BUS_URL", "http://guest:topsecret@localhost:15672/")
    with pytest.raises(ConfigError) as info:
        Settings.from_env()
    assert "topsecret" not in str(info.value)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.url = "amqp://other/"  # type: ignore[misc]


def test_a_multi_host_url_gives_one_url_per_node_with_the_same_credentials_and_options() -> None:
    url = "amqps://u:p%40ss@rabbit-1,rabbit-2:5673, [::1]:5671/shop?cafile=/ca.pem"
    assert broker_urls(url) == [
        "amqps://u:p%40ss@rabbit-1/shop?cafile=/ca.pem",
        "amqps://u:p%40ss@rabbit-2:5673/shop?cafile=/ca.pem",
        "amqps://u:p%40ss@[::1]:5671/shop?cafile=/ca.pem",
    ]
    assert broker_urls("amqp://localhost") == ["amqp://localhost"]
    assert redact("amqp://u:secret@h1,h2:5673/v") == "amqp://u:***@h1,h2:5673/v"


@pytest.mark.parametrize(
    "url", ["amqp://u:p@h1,,h3/", "amqp://u:p@h1,h2:99999/", "amqp://u:p@h1,h2:x/"]
)
def test_a_multi_host_url_with_an_unusable_host_is_a_config_error(url: str) -> None:
    with pytest.raises(ValidationError, match="unusable host") as caught:
        Settings(url=url)
    assert "p@" not in str(caught.value)


def test_settings_hold_every_bus_variable_the_library_reads() -> None:
    """Settings.from_env is the one reader: a BUS_* name anywhere in bus/ is one of its variables
    (or a CLI option's envvar of `bus ui`), and the configuration reference of the docs lists each."""
    import re

    from bus.settings import SECONDS, TEXT

    root = Path(__file__).resolve().parents[2]
    known = set(TEXT) | set(SECONDS)
    cli_only = {"BUS_UI_PORT", "BUS_UI_HOST"}  # options of `bus ui`, read by typer
    # read before any settings exist: the loop a command starts on, and the index
    # `bus run --processes N` gives each child
    cli_only |= {"BUS_LOOP", "BUS_PROCESS_INDEX"}
    # read where every robust connection is opened: the frame reader it gets (bus.amqp.reader)
    cli_only |= {"BUS_FRAME_READER"}
    used = {
        name
        for path in (root / "bus").rglob("*.py")
        for name in re.findall(r"\bBUS_[A-Z_]+\b", path.read_text())
    }
    assert used - known - cli_only == set()
    reference = (root / "docs" / "reference" / "configuration.md").read_text()
    assert {name for name in known | cli_only if f"`{name}`" not in reference} == set()


def test_from_env_reads_the_process_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_CLAIM_LEASE_SECONDS", "2.5")
    monkeypatch.setenv("BUS_METRICS_PORT", "9100")
    monkeypatch.setenv("BUS_UI_TOKEN", "")
    monkeypatch.setenv("BUS_SCHEDULER_LOCK", "my.lock")
    s = Settings.from_env()
    assert (s.claim_lease, s.metrics_port, s.ui_token, s.scheduler_lock) == (
        2.5, 9100, None, "my.lock"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("BUS_GRACE_PERIOD", "soon", "BUS_GRACE_PERIOD='soon': give a number of seconds"),
        ("BUS_METRICS_PORT", "http", "BUS_METRICS_PORT='http': give a port number"),
    ],
)
def test_a_knob_that_does_not_parse_is_one_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape(says)):
        Settings.from_env()
