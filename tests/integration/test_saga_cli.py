"""`bus saga list | show` through the real command, over a store (SQLite and PostgreSQL) that a
real refunds subscriber filled: r-1 running with its timeout pending, r-2 completed. A mistake
is one line on stderr with the CLI's exit code (2 for what the user asked, 1 for an outage)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.saga_kit import store_of, two_refunds

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with store_of(request.param, tmp_path) as url:
        yield url


async def bus(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bus.cli", "saga", *args], cwd=tmp, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def one_error_line(done: subprocess.CompletedProcess[str], code: int, says: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert says in lines[0], lines[0]
    assert done.returncode == code, (done.returncode, lines[0])
    assert done.stdout == ""


async def test_list_and_show_print_the_instances_their_steps_and_timeouts(
    amqp_url: str, prefix: str, store_url: str, tmp_path: Path
) -> None:
    await two_refunds(amqp_url, prefix, store_url)
    store = ("--store-url", store_url)

    listed = await bus(tmp_path, "list", "refunds", "--json", *store)
    assert listed.returncode == 0, listed.stderr
    objects = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(o["key"], o["status"]) for o in objects] == [("r-2", "completed"), ("r-1", "running")]
    assert set(objects[0]) == {"saga", "key", "status", "state", "version", "created_at",
                               "updated_at", "steps", "timeouts"}  # fmt: skip
    running = await bus(tmp_path, "list", "refunds", "--status", "running", "--json", *store)
    assert [json.loads(line)["key"] for line in running.stdout.splitlines()] == ["r-1"]
    text = await bus(tmp_path, "list", "refunds", "--saga", "refund", *store)
    assert text.returncode == 0 and text.stdout.count("refund ") == 2, text.stdout
    assert "r-1" in text.stdout and "steps 1" in text.stdout and "timeouts 1" in text.stdout

    shown = await bus(tmp_path, "show", "refunds", "refund", "r-2", "--json", *store)
    o = json.loads(shown.stdout)
    assert o["status"] == "completed" and o["state"] == {"amount": 7, "status": "done", "count": 0}
    assert [(s["event_id"], s["type"]) for s in o["steps"]] == [
        ("e-2", "refund.requested"), ("e-3", "payment.refunded")
    ]  # fmt: skip
    assert o["timeouts"] == [] and all(s["at"].endswith("Z") for s in o["steps"])
    pending = await bus(tmp_path, "show", "refunds", "refund", "r-1", *store)
    assert pending.returncode == 0, pending.stderr
    assert "refund r-1: running (version 1)" in pending.stdout
    assert "refund.requested  e-1" in pending.stdout
    assert "pending timeouts:\n" in pending.stdout and "refund.expired" in pending.stdout

    one_error_line(await bus(tmp_path, "show", "refunds", "refund", "r-9", *store), 2,
                   "no 'refund' saga with key 'r-9' in subscriber 'refunds'")  # fmt: skip
    one_error_line(await bus(tmp_path, "show", "refunds", "refnd", "r-1", *store), 2,
                   "subscriber 'refunds' has no saga 'refnd' (the sagas with instances: refund)")  # fmt: skip
    one_error_line(await bus(tmp_path, "list", "refunds", "--saga", "refnd", *store), 2,
                   "has no saga 'refnd'")  # fmt: skip
    bad = await bus(tmp_path, "list", "refunds", "--status", "paused", *store)
    assert bad.returncode == 2 and "running or completed" in bad.stderr


async def test_an_unreachable_store_is_one_line_and_exit_1(tmp_path: Path) -> None:
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("not SQLite\n" * 100)
    for url, says in (
        ("postgresql://postgres@127.0.0.1:1/test", "cannot reach the store at postgresql://"),
        (f"sqlite:///{not_a_database}", "cannot open the store at"),
    ):
        for args in (("list", "refunds"), ("show", "refunds", "refund", "r-1")):
            one_error_line(await bus(tmp_path, *args, "--store-url", url), 1, says)


async def test_a_store_without_instances_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    empty = await bus(tmp_path, "list", "refunds", "--saga", "refund", "--store-url", url)
    assert empty.returncode == 0 and empty.stdout.strip() == "no saga instances in refunds"
    one_error_line(await bus(tmp_path, "show", "refunds", "refund", "r-1", "--store-url", url),
                   2, "no 'refund' saga with key 'r-1'")  # fmt: skip
