"""deploy/rabbitmq/definitions.json imports into a real broker and gives what `apply` declares.

On the private node (tests/integration/nodes.py): importing creates users and vhosts, which the
shared broker must never get from the tests. Each test uses a fresh vhost (and uniquely named
users), deleted afterwards; the definitions are rewritten to that vhost before
`rabbitmqctl import_definitions`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import aiormq
import pytest

import bus.topology.delays as delays
from bus import Context, Reject, Router
from bus.consume.runtime import Runtime
from bus.produce.publisher import Publisher
from bus.stores import MemoryStore
from bus.topology import export
from bus.topology.model import Topology, load
from bus.topology.plan import BindingDecl, QueueDecl, desired
from tests.conftest import wait_for
from tests.integration.helpers import ORDER_SCHEMA, get_all, make_topology, queue_depth
from tests.integration.nodes import Node

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
TOPOLOGY = ROOT / "topology" / "topology.yaml"


@pytest.fixture
def node(private_node: Node) -> Node:
    return private_node


@pytest.fixture
def node_url(node: Node) -> str:
    return node.url()


@pytest.fixture
def vhost(node: Node) -> Iterator[str]:
    name = f"bus-test-{uuid.uuid4().hex[:10]}"
    node.ctl("add_vhost", name)
    try:
        node.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        node.ctl("delete_vhost", name)


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


def import_definitions(node: Node, doc: dict[str, Any]) -> None:
    # rabbitmqctl runs as the rabbitmq user: the file must be readable by that user, which
    # pytest's private tmp_path is not. No secrets in it: users carry no password hash.
    path = node.write_file(f"definitions-{uuid.uuid4().hex[:8]}.json", json.dumps(doc))
    try:
        node.ctl("import_definitions", node.inside(path))
    finally:
        path.unlink()


def broker_queues(node: Node, vhost: str) -> dict[str, dict[str, Any]]:
    """Queue name -> arguments, as the broker itself reports them."""
    rows = json.loads(
        node.ctl("list_queues", "-q", "-p", vhost, "name", "arguments", "--formatter", "json")
    )
    return {r["name"]: {a[0]: a[2] for a in r["arguments"]} for r in rows}


def broker_bindings(node: Node, vhost: str) -> set[tuple[str, str, str]]:
    out = node.ctl(
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


async def test_committed_definitions_import_into_a_fresh_vhost(
    node: Node, node_url: str, vhost: str
) -> None:
    want = desired(load(TOPOLOGY))
    queues = {d.name: dict(d.arguments) for d in want if isinstance(d, QueueDecl)}
    import_definitions(node, rewrite(json.loads(DEFINITIONS.read_text()), vhost))

    url = in_vhost(node_url, vhost)
    # the import is asynchronous: wait until the broker has every queue
    await wait_for(
        lambda: _all_present(url, list(queues)),
        timeout=30,
        message=f"the imported queues to exist in vhost {vhost}",
    )
    assert broker_queues(node, vhost) == queues, "imported queue arguments differ from `apply`'s"
    expected = {(d.exchange, d.queue, d.routing_key) for d in want if isinstance(d, BindingDecl)}
    assert expected <= broker_bindings(node, vhost)

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
def user_suffix(node: Node) -> Iterator[str]:
    """A unique suffix for the imported users (users are broker-wide); deletes them after."""
    suffix = f"bus-test-{uuid.uuid4().hex[:8]}"
    yield suffix
    for line in node.ctl("list_users", "-q").splitlines():
        user = line.split("\t", 1)[0]
        if user.endswith(suffix):
            node.ctl("delete_user", user)


async def test_subscriber_users_reach_only_their_own_queues(
    node: Node, node_url: str, vhost: str, user_suffix: str
) -> None:
    topology = load(TOPOLOGY)
    doc = export.definitions(topology, vhost=vhost, users=True)
    names = {u["name"]: f"{u['name']}-{user_suffix}" for u in doc["users"]}
    for u in doc["users"]:
        u["name"] = names[u["name"]]
    for p in [*doc["permissions"], *doc["topic_permissions"]]:
        p["user"] = names[p["user"]]
    import_definitions(node, doc)
    email = topology.subscriber("email")
    await wait_for(
        lambda: _all_present(in_vhost(node_url, vhost), [email.queue, email.dlq]),
        timeout=30,
        message="the imported queues",
    )
    await wait_for(
        lambda: names["email"] in node.ctl("list_users", "-q"), timeout=30, message="the users"
    )
    with pytest.raises(aiormq.exceptions.AMQPConnectionError):  # no password login yet
        await aio_pika.connect(in_vhost(node_url, vhost, names["email"], ""), timeout=10)
    node.ctl("change_password", names["email"], "s3cret")
    url = in_vhost(node_url, vhost, names["email"], "s3cret")

    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel()
        for q in [email.queue, *email.retry_queues, email.dlq]:
            await channel.declare_queue(q, passive=True)  # read its own queues
        own = await channel.declare_queue(email.queue, passive=True)
        await own.get(fail=False)  # basic.get needs `read`
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


def _least_privilege_topology(prefix: str) -> Topology:
    exchange = f"{prefix}.events"
    events = {
        "order.placed": {"exchange": exchange, "schema": ORDER_SCHEMA},
        "order.shipped": {"exchange": exchange},
        "mail.sent": {"exchange": exchange},
    }
    subs = {
        "email": {"keys": ["order.placed"], "publishes": ["mail.sent"]},
        "analytics": {"keys": ["#"]},
    }
    return make_topology(prefix, subs, events=events, delays=["200ms"])


async def _refused(action: Awaitable[Any]) -> bool:
    try:
        await action
    except aiormq.exceptions.ChannelAccessRefused:
        return True
    return False


async def test_exported_users_do_all_their_own_work_and_nothing_else(
    node: Node, node_url: str, vhost: str, user_suffix: str, prefix: str
) -> None:
    # Given the definitions with users of a topology, imported, each user with a password
    topology = _least_privilege_topology(prefix)
    doc = export.definitions(topology, vhost=vhost, users=True)
    names = {u["name"]: f"{u['name']}-{user_suffix}" for u in doc["users"]}
    for u in doc["users"]:
        u["name"] = names[u["name"]]
    for p in [*doc["permissions"], *doc["topic_permissions"]]:
        p["user"] = names[p["user"]]
    import_definitions(node, doc)
    await wait_for(
        lambda: all(n in node.ctl("list_users", "-q") for n in names.values()),
        timeout=30, interval=0.5, message="the imported users",
    )  # fmt: skip
    for user in names.values():
        node.ctl("change_password", user, f"pw-{user}")
    url = {k: in_vhost(node_url, vhost, n, f"pw-{n}") for k, n in names.items()}
    admin = in_vhost(node_url, vhost)
    email, analytics = topology.subscriber("email"), topology.subscriber("analytics")
    await wait_for(
        lambda: _all_present(admin, [email.queue, *email.retry_queues, email.dlq, analytics.queue]),
        timeout=30, message="the imported queues",
    )  # fmt: skip

    # When email runs as its own user: fails once (retry hand-off), then publishes a follow-up;
    # a rejected event goes to its DLQ
    attempts: list[int] = []
    router = Router()

    @router.on("order.placed")
    async def confirm(event: dict[str, Any], ctx: Context) -> None:
        if event["order_id"] == "bad":
            raise Reject("blocked")
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("SMTP down")
        await ctx.publish("mail.sent", {"order_id": event["order_id"]})
        await ctx.publish("mail.sent", {"order_id": event["order_id"]}, delay=1)  # the demo's

    rt = Runtime(topology, "email", router, url=url["email"], store=MemoryStore())
    await rt.start()
    try:
        # and the producer publishes every declared event type
        async with Publisher(url["producer"], topology) as pub:
            await pub.publish("order.placed", {"order_id": "o-1"}, id=f"{prefix}-1")
            await pub.publish("order.placed", {"order_id": "bad"}, id=f"{prefix}-2")
            await pub.publish("order.shipped", {"order_id": "o-1"}, id=f"{prefix}-3")
            await pub.publish("mail.sent", {"order_id": "o-0"}, id=f"{prefix}-4")
            await pub.publish("order.shipped", {"order_id": "o-1"}, id=f"{prefix}-5", delay=1)
        await wait_for(lambda: attempts == [1, 2], message="email to retry and succeed")
        await wait_for(lambda: _depth(admin, email.dlq, 1), message="the rejected event parked")
        # analytics: 2 order.placed, order.shipped, mail.sent and a delayed order.shipped from
        # the producer; email's mail.sent, and the same delayed
        await wait_for(lambda: _depth(admin, analytics.queue, 7), message="analytics' 7 events")
    finally:
        await rt.stop(5)

    # Then analytics reads its own queue, with email's follow-up in it
    got = await get_all(in_vhost(node_url, vhost, names["analytics"], f"pw-{names['analytics']}"),
                        analytics.queue)  # fmt: skip
    assert sorted(m.routing_key or "" for m in got).count("mail.sent") == 3

    # and nobody can do what is not theirs
    conn = await aio_pika.connect(url["email"])
    try:
        assert await _refused(_get(conn, analytics.queue)), "email read analytics' queue"
        assert await _refused(_publish(conn, topology, "order.placed")), (
            "email published order.placed"
        )
        exchange, key = delays.route(1, topology.events["order.placed"].exchange, "order.placed")
        assert await _refused(_publish(conn, topology, key, exchange=exchange)), (
            "email published order.placed by delaying it"
        )
        deliver_key = delays.deliver_key(topology.events["order.placed"].exchange, "order.placed")
        assert await _refused(_publish(conn, topology, deliver_key, exchange=delays.DELIVER)), (
            "email wrote to the delay levels' last hop"
        )
    finally:
        await conn.close()
    conn = await aio_pika.connect(url["producer"])
    try:
        assert await _refused(_publish(conn, topology, "order.refunded")), "an undeclared type"
        assert await _refused(_publish(conn, topology, email.queue, exchange="")), "into a queue"
        assert await _refused(_get(conn, email.queue)), "the producer read a queue"
    finally:
        await conn.close()


async def _depth(url: str, queue: str, n: int) -> bool:
    return await queue_depth(url, queue) == n


async def _get(conn: aio_pika.abc.AbstractConnection, queue: str) -> None:
    channel = await conn.channel()
    q = await channel.get_queue(queue, ensure=False)
    await q.get(fail=False)


async def _publish(
    conn: aio_pika.abc.AbstractConnection, topology: Topology, key: str, exchange: str | None = None
) -> None:
    channel = await conn.channel(publisher_confirms=True)
    name = next(iter(topology.exchanges)) if exchange is None else exchange
    target = (
        channel.default_exchange if name == "" else await channel.get_exchange(name, ensure=False)
    )
    await target.publish(aio_pika.Message(b"{}", message_id="x", type=key), routing_key=key)
