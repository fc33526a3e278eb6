"""BUS_LOOP: which event loop the long-running commands run on."""

from __future__ import annotations

import asyncio
import sys

import pytest

from bus import loop
from bus.errors import ConfigError, MissingExtra


@pytest.mark.parametrize(
    ("setting", "installed", "expected"),
    [
        ("auto", True, "uvloop"),
        ("auto", False, "asyncio"),
        ("", True, "uvloop"),
        ("asyncio", True, "asyncio"),
        ("uvloop", True, "uvloop"),
        ("UVLOOP", True, "uvloop"),
        ("uvloop", False, "uvloop"),  # asked for: `run` then says which extra is missing
    ],
)
def test_the_setting_chooses_the_loop(setting: str, installed: bool, expected: str) -> None:
    assert loop.choose(setting, installed) == expected


def test_an_unknown_loop_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="BUS_LOOP 'tokio': use auto, asyncio or uvloop"):
        loop.choose("tokio", True)


def test_auto_runs_on_uvloop_when_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUS_LOOP", raising=False)

    async def which() -> str:
        return loop.name_of()

    assert loop.run(which()) == "uvloop"


def test_asyncio_is_chosen_by_bus_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_LOOP", "asyncio")

    async def which() -> str:
        return loop.name_of()

    assert loop.run(which()) == "asyncio"


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if the speed extra were not installed
    monkeypatch.setattr(loop.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("BUS_LOOP", "auto")

    async def which() -> str:
        return loop.name_of()

    assert loop.run(which()) == "asyncio"


def test_uvloop_without_the_extra_names_the_speed_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    monkeypatch.setenv("BUS_LOOP", "uvloop")

    async def never() -> None:
        raise AssertionError("must not run")

    with pytest.raises(MissingExtra) as exc:
        loop.run(never())
    assert str(exc.value) == 'BUS_LOOP=uvloop needs the "speed" extra: pip install "bus[speed]"'


def test_name_of_a_plain_asyncio_loop() -> None:
    plain = asyncio.new_event_loop()
    try:
        assert loop.name_of(plain) == "asyncio"
    finally:
        plain.close()
