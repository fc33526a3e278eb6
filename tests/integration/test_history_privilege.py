"""The least-privilege `history` user of the exported definitions (`--users`) reads the logs
and replays into a subscriber's queue, on a real broker, and can do nothing else: no other
queue, no event published to an exchange, nothing declared.

On the private node, in a fresh vhost with uniquely named users deleted afterwards (as
test_definitions_import does): guest is never changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest
import yaml

from bus import Publisher
from bus.amqp.connection import connect_plain
from bus.history import History, Selection
from bus.history.replay import replay
from bus.topology import export
from bus.topology.model import from_dict
from tests.conftest import wait_for
from tests.integration.helpers import apply_topology, queue_depth
from tests.integration.history_kit import history_doc
from tests.integration.nodes import Node
from tests.integration.test_definitions_import import (
    import_definitions,
    in_vhost,
    node,
    node_url,
    user_suffix,
    vhost,
)
from tests.integration.test_history_replay import bus

pytestmark = pytest.mark.rabbitmq4
__all__ = ["node", "node_url", "user_suffix", "vhost"]  # the fixtures

SUBS = {"email": {"keys": ["order.placed"]}, "analytics": {"keys": ["#"]}}


async def _refused(action: Any) -> bool:
    try:
        await action
    except aiormq.exceptions.ChannelAccessRefused:
        return True
    return False


async def test_history_user_reads_the_logs_and_replays_but_touches_nothing_else(
    node: Node, node_url: str, vhost: str, user_suffix: str, prefix: str, tmp_path: Path
) -> None:
    doc = history_doc(prefix, SUBS)
    topology = from_dict(doc, source=f"test:{prefix}")
    admin = in_vhost(node_url, vhost)
    await apply_topology(admin, topology)
    async with Publisher(admin, topology) as pub:
        await pub.publish_many([("order.placed", {"order_id": f"o-{i}"}) for i in range(3)])
        await pub.publish("order.shipped", {"order_id": "o-0"})

    # the exported users, only the history one imported, with a password
    defs = export.definitions(topology, vhost=vhost, users=True)
    user = f"{export.HISTORY_USER}-{user_suffix}"
    perm = next(p for p in defs["permissions"] if p["user"] == export.HISTORY_USER)
    assert perm["read"] == f"^({prefix}\\.events\\.history)$" and perm["configure"] == "^$"
    only = {
        "users": [{**u, "name": user} for u in defs["users"] if u["name"] == export.HISTORY_USER],
        "permissions": [{**perm, "user": user}],
        "topic_permissions": [
            {**p, "user": user}
            for p in defs["topic_permissions"]
            if p["user"] == export.HISTORY_USER
        ],
    }
    import_definitions(node, only)
    await wait_for(lambda: user in node.ctl("list_users", "-q"), timeout=30, interval=0.5,
                   message="the imported user")  # fmt: skip
    node.ctl("change_password", user, f"pw-{user}")
    url = in_vhost(node_url, vhost, user, f"pw-{user}")

    # reads the log, oldest first, to its end
    async with History(url) as h:
        got = [e.type async for e in h.read(f"{prefix}.events")]
    assert got == ["order.placed"] * 3 + ["order.shipped"]
    # `bus history --json` as that user
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(doc))
    cli = bus(["history", f"{prefix}.events", "--json"], url, path)
    assert cli.returncode == 0, cli.stderr
    assert len(cli.stdout.splitlines()) == 4
    # `bus replay` into one subscriber's queue, dry and for real, and the Python API
    dry = bus(["replay", "email", "--since", "1h", "--dry-run"], url, path)
    assert dry.returncode == 0 and "would copy 3 events" in dry.stdout, dry.stderr
    done = bus(["replay", "email", "--since", "1h", "--yes"], url, path)
    assert done.returncode == 0 and "copied 3 events" in done.stdout, done.stderr
    conn = await connect_plain(url)
    try:
        out = await replay(conn, topology, topology.subscriber("email"), Selection())
        assert out.per_type == {"order.placed": 3}
    finally:
        await conn.close()
    assert await queue_depth(admin, f"{prefix}.email") == 3 + 3 + 3
    assert await queue_depth(admin, f"{prefix}.analytics") == 4

    # and nothing else: no subscriber queue read, no event published, nothing declared
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel()
        queue = await channel.get_queue(f"{prefix}.email", ensure=False)
        assert await _refused(queue.get(fail=False)), "read a subscriber's queue"
        channel = await conn.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{prefix}.events", ensure=False)
        assert await _refused(
            exchange.publish(aio_pika.Message(b"{}", type="order.placed"), "order.placed")
        ), "published an event"
        channel = await conn.channel()
        assert await _refused(channel.declare_queue(f"{prefix}.mine")), "declared a queue"
    finally:
        await conn.close()
