"""The README's "Testing your handlers" example runs as written, with no broker."""

from __future__ import annotations

import re
import socket
import types
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def example() -> str:
    text = README.read_text()
    section = text.split("## Testing your handlers", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the section has no python example"
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


async def test_the_readme_handler_test_passes_without_a_broker(no_network: list[Any]) -> None:
    module = types.ModuleType("readme_example")
    exec(compile(example(), str(README), "exec"), module.__dict__)
    await module.test_confirmations()
    assert no_network == [], "TestBus opened no connection"
