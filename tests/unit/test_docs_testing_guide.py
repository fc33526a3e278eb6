"""The example of the docs' "Test handlers" guide runs as written, with no broker."""

from __future__ import annotations

import re
import socket
import types
from pathlib import Path
from typing import Any

import pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "testing.md"


def example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert blocks, "the guide has no python example"
    return str(blocks[0])


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Any attempt to open a network connection fails the test (and is recorded)."""
    tried: list[Any] = []

    def refuse(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            tried.append(address)
            raise AssertionError(f"the example tried to connect to {address}")
        raise OSError("no sockets here")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return tried


async def test_the_testing_guide_example_passes_without_a_broker(no_network: list[Any]) -> None:
    module = types.ModuleType("readme_example")
    exec(compile(example(), str(GUIDE), "exec"), module.__dict__)
    await module.test_confirmations()
    assert no_network == [], "TestBus opened no connection"
