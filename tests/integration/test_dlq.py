"""`bus dlq list | show | replay | purge` against parked messages on the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bus import Context, Router
from bus.produce.publisher import Publisher
from tests.conftest import wait_for
from tests.integration.helpers import applied, make_topology, queue_depth, running, topology_doc

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

SUBS = {"email": {"keys": ["order.placed"]}}


def bus_cli(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", *args], env={**os.environ, **env},
        capture_output=True, text=True, timeout=60, input=stdin,
    )  # fmt: skip


async def cli(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(bus_cli, *args, env=env, stdin=stdin)


async def test_parked_messages_are_listed_shown_and_replayed_until_the_dlq_is_empty(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topo_file = tmp_path / "topology.yaml"
    topo_file.write_text(yaml.safe_dump(topology_doc(prefix, SUBS, delays=["100ms"])))
    env = {"BUS_URL": amqp_url, "BUS_TOPOLOGY": str(topo_file)}
    topology = make_topology(prefix, SUBS, delays=["100ms"])
    broken = True
    handled: list[tuple[str, int]] = []
    router = Router()

    @router.on("order.placed")
    async def send(event: dict[str, Any], ctx: Context) -> None:
        if broken:
            raise TimeoutError(f"smtp timed out for {event['order_id']}")
        handled.append((ctx.id, ctx.attempt))

    dlq = f"{prefix}.email.dlq"
    async with applied(amqp_url, topology), running(amqp_url, topology, "email", router):
        async with Publisher(amqp_url, topology) as pub:
            for i in range(3):
                await pub.publish("order.placed", {"order_id": f"o-{i}"}, id=f"e-{i}")
        await wait_for(lambda: _depth(amqp_url, dlq, 3), timeout=10, message="3 parked messages")

        listed = await cli("dlq", "list", "email", env=env)
        assert listed.returncode == 0, listed.stderr
        for i in range(3):
            assert f"e-{i}" in listed.stdout
        assert "retries-exhausted" in listed.stdout
        assert "3  TimeoutError" in listed.stdout, listed.stdout  # grouped by exception type

        as_json = await cli("dlq", "list", "email", "--json", "--exception", "SMTP", env=env)
        rows = json.loads(as_json.stdout)
        assert sorted(r["id"] for r in rows) == ["e-0", "e-1", "e-2"], "case-insensitive match"
        assert {r["attempts"] for r in rows} == {2}, "attempts is a number"
        for filters, expected in (
            (["--type", "order.*"], 3), (["--type", "order.placed"], 3), (["--type", "mail.#"], 0),
            (["--reason", "retries-exhausted"], 3), (["--reason", "rejected"], 0),
            (["--exception", "TimeoutError"], 3), (["--exception", "ValueError"], 0),
        ):  # fmt: skip
            got = await cli("dlq", "list", "email", "--json", *filters, env=env)
            assert len(json.loads(got.stdout)) == expected, (filters, got.stdout, got.stderr)

        shown = await cli("dlq", "show", "email", "e-1", env=env)
        assert shown.returncode == 0, shown.stderr
        assert "smtp timed out for o-1" in shown.stdout
        assert "Traceback" in shown.stdout and '"order_id": "o-1"' in shown.stdout

        dry = await cli("dlq", "replay", "email", "--all", "--dry-run", env=env)
        assert "would replay 3" in dry.stdout
        assert await queue_depth(amqp_url, dlq) == 3, "a dry run changes nothing"

        broken = False
        one = await cli("dlq", "replay", "email", "--id", "e-2", env=env)
        assert one.returncode == 0, one.stderr
        await wait_for(lambda: handled == [("e-2", 1)], message="e-2 handled again at attempt 1")
        assert await queue_depth(amqp_url, dlq) == 2

        rest = await cli("dlq", "replay", "email", "--all", "--rate", "100", env=env)
        assert "replayed 2" in rest.stdout, rest.stdout + rest.stderr
        await wait_for(lambda: len(handled) == 3, message="every replayed message handled")
        assert sorted(handled) == [("e-0", 1), ("e-1", 1), ("e-2", 1)]
        assert await queue_depth(amqp_url, dlq) == 0

        missing = await cli("dlq", "replay", "email", "--id", "nope", env=env)
        shown_missing = await cli("dlq", "show", "email", "nope", env=env)
        for result in (missing, shown_missing):  # the same exit code for the same mistake
            assert result.returncode == 2, result.stderr
            assert "not found" in result.stderr or "no message" in result.stderr
        assert "replayed" not in missing.stdout, f"a count before the error: {missing.stdout}"


async def test_purge_refuses_without_a_terminal_unless_yes_and_delete_removes_single_ids(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    topo_file = tmp_path / "topology.yaml"
    topo_file.write_text(yaml.safe_dump(topology_doc(prefix, SUBS)))
    env = {"BUS_URL": amqp_url, "BUS_TOPOLOGY": str(topo_file)}
    topology = make_topology(prefix, SUBS)
    async with applied(amqp_url, topology):
        import aio_pika

        conn = await aio_pika.connect(amqp_url)
        ch = await conn.channel()
        for i in range(2):
            await ch.default_exchange.publish(
                aio_pika.Message(b"{}", message_id=f"p{i}"), f"{prefix}.email.dlq"
            )
        await conn.close()
        dlq = f"{prefix}.email.dlq"
        await wait_for(lambda: _depth(amqp_url, dlq, 2), message="two parked messages")
        refused = await cli("dlq", "purge", "email", env=env, stdin="y\n")  # a pipe, not a tty
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.count("\n") == 1 and "pass --yes" in refused.stderr
        assert await queue_depth(amqp_url, dlq) == 2

        deleted = await cli("dlq", "delete", "email", "--id", "p0", env=env)
        assert deleted.returncode == 0 and "deleted 1" in deleted.stdout, deleted.stderr
        assert await queue_depth(amqp_url, dlq) == 1
        listed = await cli("dlq", "list", "email", "--json", env=env)
        assert [r["id"] for r in json.loads(listed.stdout)] == ["p1"]
        absent = await cli("dlq", "delete", "email", "--id", "p0", env=env)
        assert absent.returncode == 2 and "not found" in absent.stderr

        await cli("dlq", "delete", "email", "--id", "p1", env=env)
        done = await cli("dlq", "purge", "email", "--yes", env=env)
        assert done.returncode == 0 and "purged 0" in done.stdout
        assert await queue_depth(amqp_url, dlq) == 0


async def _depth(url: str, queue: str, n: int) -> bool:
    return await queue_depth(url, queue) == n
