"""Shared fixtures: the broker URL (DESIGN.md, Part 2 "Testing") and unique names per test."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

LOCAL_URL = "amqp://guest:guest@localhost:5672/"
HOW_TO_GET_A_BROKER = (
    "no RabbitMQ for the integration tests: set BUS_TEST_URL, start one on localhost:5672 "
    "(`rabbitmq-server -detached`), or install Docker for testcontainers"
)


# .ci/run sets it: a check whose command is missing fails there instead of skipping
REQUIRE_TOOLS = os.environ.get("BUS_REQUIRE_TOOLS") == "1"


def tool(name: str, checks: str) -> str:
    """The path of the command *name*, which *checks* something; missing, the test is skipped
    with that reason, or fails where `BUS_REQUIRE_TOOLS=1` (CI)."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not on PATH: {checks} not checked"
        if REQUIRE_TOOLS:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


# -- nothing left behind: a PostgreSQL database and a matplotlib folder of the session's own --

POSTGRES_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
_made: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Before the test modules read `BUS_TEST_POSTGRES_URL`: point it at a fresh database on
    the same server (dropped at the end), and matplotlib at a temporary folder."""
    if "MPLCONFIGDIR" not in os.environ:
        _made["mpl"] = os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="bus-mpl-")
    server = os.environ.get("BUS_TEST_POSTGRES_URL", POSTGRES_DEFAULT)
    if urlsplit(server).path.lstrip("/").startswith("bus_test_"):
        return  # a parent session's (pytester runs pytest inside pytest)
    name = f"bus_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_postgres(server, f'CREATE DATABASE "{name}"'))
    except Exception:  # no PostgreSQL here: its tests say so themselves
        return
    _made["database"], _made["server"] = name, server
    os.environ["BUS_TEST_POSTGRES_URL"] = urlsplit(server)._replace(path=f"/{name}").geturl()


def pytest_unconfigure(config: pytest.Config) -> None:
    if "mpl" in _made:
        shutil.rmtree(_made.pop("mpl"), ignore_errors=True)
    if "database" in _made:
        name = _made.pop("database")
        with contextlib.suppress(Exception):
            asyncio.run(_postgres(_made.pop("server"), f'DROP DATABASE "{name}" WITH (FORCE)'))


async def _postgres(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "localhost", parts.port or 5672), timeout=2
        ):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """`BUS_TEST_URL`, else the local broker, else a testcontainers RabbitMQ, else fail clearly.
    (tests/integration/conftest.py gives a RabbitMQ 4 node instead when `BUS_TEST_BROKER=4.0`.)"""
    yield from default_amqp_url()


def default_amqp_url() -> Iterator[str]:
    """The default pass's broker: `BUS_TEST_URL`, the local one, or testcontainers' RabbitMQ
    (`rabbitmq:4` when `BUS_TEST_BROKER=4.0`)."""
    explicit = os.environ.get("BUS_TEST_URL")
    if explicit:
        yield explicit
        return
    if _answers(LOCAL_URL):
        yield LOCAL_URL
        return
    try:
        from testcontainers.rabbitmq import RabbitMqContainer

        image = (
            "rabbitmq:4-management"
            if os.environ.get("BUS_TEST_BROKER", "").startswith("4")
            else "rabbitmq:3.13-management"
        )
        with RabbitMqContainer(image) as rabbit:
            host, port = rabbit.get_container_host_ip(), rabbit.get_exposed_port(5672)
            yield f"amqp://guest:guest@{host}:{port}/"
    except Exception:
        pytest.fail(HOW_TO_GET_A_BROKER, pytrace=False)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI's callback points the root logger at its stream (CliRunner's, in tests): undo it,
    so later tests never log to a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def prefix() -> str:
    """A unique name prefix, so tests never see each other's queues or messages."""
    return f"t{uuid.uuid4().hex[:10]}"


async def wait_for(
    condition: Callable[[], Any] | Callable[[], Awaitable[Any]],
    timeout: float = 10.0,
    message: str = "condition",
    interval: float = 0.02,
) -> Any:
    """Poll *condition* until it is truthy; fail with *message* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.1f}s waiting for {message}", pytrace=False)
        await asyncio.sleep(interval)
