"""deploy/rabbitmq/definitions.json imports into a real broker and gives what `apply` declares.

Each test uses a fresh vhost (and uniquely named users), created with `rabbitmqctl` and deleted
afterwards; the definitions are rewritten to that vhost before `rabbitmqctl import_definitions`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import aiormq
import pytest

from bus.topology import export
from bus.topology.model import load
from bus.topology.plan import BindingDecl, QueueDecl, desired
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
TOPOLOGY = ROOT / "topology" / "topology.yaml"
RABBITMQCTL = shutil.which("rabbitmqctl")

pytestmark = pytest.mark.skipif(
    RABBITMQCTL is None,
    reason="rabbitmqctl is not on PATH: the definitions import needs a local RabbitMQ node",
)


def ctl(*args: str) -> str:
    assert RABBITMQCTL is not None
    done = subprocess.run(
        [RABBITMQCTL, *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}", pytrace=False)
    return done.stdout


@pytest.fixture
def vhost(amqp_url: str) -> Iterator[str]:
    name = f"bus-test-{uuid.uuid4().hex[:10]}"
    ctl("add_vhost", name)
    try:
        ctl("set_permissions", "-p", name, urlsplit(amqp_url).username or "guest", ".*", ".*", ".*")
        yield name
    finally:
        ctl("delete_vhost", name)


def in_vhost(url: str, vhost: str, user: str | None = None, password: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if user is not None:
        host = netloc.rsplit("@", 1)[-1]
        netloc = f"{quote(user, safe='')}:{quote(password or '', safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc, path="/" + quote(vhost, safe="")))


def rewrite(doc: dict[str, Any], vhost: str) -> dict[str, Any]:
    """*doc* with every object moved to *vhost*."""
    out = json.loads(json.dumps(doc))
    out["vhosts"] = [{"name": vhost}]
    for part in ("exchanges", "queues", "bindings", "permissions"):
        for obj in out.get(part, []):
            obj["vhost"] = vhost
    return out


def import_definitions(doc: dict[str, Any]) -> None:
    # rabbitmqctl runs as the rabbitmq user (its wrapper drops root and does not pass stdin on):
    # the file must be readable by that user, which pytest's private tmp_path is not.
    folder = Path(tempfile.mkdtemp(prefix="bus-definitions-"))
    try:
        folder.chmod(0o755)
        path = folder / "definitions.json"
        path.write_text(json.dumps(doc))  # no secrets: users carry no password hash
        path.chmod(0o644)
        ctl("import_definitions", str(path))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def broker_queues(vhost: str) -> dict[str, dict[str, Any]]:
    """Queue name -> arguments, as the broker itself reports them."""
    rows = json.loads(
        ctl("list_queues", "-q", "-p", vhost, "name", "arguments", "--formatter", "json")
    )
    return {r["name"]: {a[0]: a[2] for a in r["arguments"]} for r in rows}


def broker_bindings(vhost: str) -> set[tuple[str, str, str]]:
    out = ctl(
        "list_bindings", "-q", "-p", vhost, "source_name", "destination_name", "routing_key",
        "--formatter", "json",
    )  # fmt: skip
    return {(b["source_name"], b["destination_name"], b["routing_key"]) for b in json.loads(out)}


async def passive_declare_all(url: str, names: list[str]) -> list[str]:
    """The names among *names* that exist (passive declare), each on its own channel."""
    conn = await aio_pika.connect(url)
    found = []
    try:
        for name in names:
            channel = await conn.channel()
            try:
                await channel.declare_queue(name, passive=True)
                found.append(name)
            except aiormq.exceptions.ChannelNotFoundEntity:
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await conn.close()
    return found


async def test_committed_definitions_import_into_a_fresh_vhost(amqp_url: str, vhost: str) -> None:
    want = desired(load(TOPOLOGY))
    queues = {d.name: dict(d.arguments) for d in want if isinstance(d, QueueDecl)}
    import_definitions(rewrite(json.loads(DEFINITIONS.read_text()), vhost))

    url = in_vhost(amqp_url, vhost)
    # the import is asynchronous: wait until the broker has every queue
    await wait_for(
        lambda: _all_present(url, list(queues)),
        timeout=30,
        message=f"the imported queues to exist in vhost {vhost}",
    )
    assert broker_queues(vhost) == queues, "imported queue arguments differ from `apply`'s"
    expected = {(d.exchange, d.queue, d.routing_key) for d in want if isinstance(d, BindingDecl)}
    assert expected <= broker_bindings(vhost)

    # equivalent declarations succeed only when every argument matches (406 otherwise)
    conn = await aio_pika.connect(url)
    try:
        for name, args in queues.items():
            channel = await conn.channel()
            await channel.declare_queue(name, durable=True, arguments=args)
            await channel.close()
    finally:
        await conn.close()


async def _all_present(url: str, names: list[str]) -> bool:
    return len(await passive_declare_all(url, names)) == len(names)


@pytest.fixture
def user_suffix() -> Iterator[str]:
    """A unique suffix for the imported users (users are broker-wide); deletes them after."""
    suffix = f"bus-test-{uuid.uuid4().hex[:8]}"
    yield suffix
    for line in ctl("list_users", "-q").splitlines():
        user = line.split("\t", 1)[0]
        if user.endswith(suffix):
            ctl("delete_user", user)


async def test_subscriber_users_reach_only_their_own_queues(
    amqp_url: str, vhost: str, user_suffix: str
) -> None:
    topology = load(TOPOLOGY)
    doc = export.definitions(topology, vhost=vhost, users=True)
    names = {u["name"]: f"{u['name']}-{user_suffix}" for u in doc["users"]}
    for u in doc["users"]:
        u["name"] = names[u["name"]]
    for p in doc["permissions"]:
        p["user"] = names[p["user"]]
    import_definitions(doc)
    email = topology.subscriber("email")
    await wait_for(
        lambda: _all_present(in_vhost(amqp_url, vhost), [email.queue, email.dlq]),
        timeout=30,
        message="the imported queues",
    )
    await wait_for(
        lambda: names["email"] in ctl("list_users", "-q"), timeout=30, message="the users"
    )
    with pytest.raises(aiormq.exceptions.AMQPConnectionError):  # no password login yet
        await aio_pika.connect(in_vhost(amqp_url, vhost, names["email"], ""), timeout=10)
    ctl("change_password", names["email"], "s3cret")
    url = in_vhost(amqp_url, vhost, names["email"], "s3cret")

    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel()
        for q in [email.queue, *email.retry_queues, email.dlq]:
            await channel.declare_queue(q, passive=True)  # read its own queues
        own = await channel.declare_queue(email.queue, passive=True)
        await own.get(fail=False)  # basic.get needs `read`
        events = await channel.get_exchange("events", ensure=False)
        await events.publish(aio_pika.Message(b"{}"), routing_key="unrouted.probe")
        await channel.default_exchange.publish(  # the retry hand-off's route
            aio_pika.Message(b"{}"), routing_key=email.retry_queue(email.delays[0])
        )
        retry = await channel.declare_queue(email.retry_queue(email.delays[0]), passive=True)
        parked = await wait_for(
            lambda: retry.get(fail=False, no_ack=True), message="the hand-off publish to arrive"
        )
        assert parked.body == b"{}"

        foreign = await conn.channel()
        other = await foreign.declare_queue("analytics", passive=True)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await other.get(fail=False)
    finally:
        await conn.close()
