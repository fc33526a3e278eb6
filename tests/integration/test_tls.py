"""`amqps://` against a private node with a TLS listener and a CA made by the test run.

Verification is on in every case: the right CA connects; the wrong CA, an expired certificate
and a wrong host name each fail with one line (BrokerUnavailable; exit 1 from the CLI), and a
client certificate is presented when the URL names one.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bus import Context, Router
from bus.amqp.connection import connect, connect_plain
from bus.consume.runtime import Runtime
from bus.errors import BrokerUnavailable, ConfigError
from bus.produce.publisher import Publisher
from bus.stores import MemoryStore
from tests.conftest import wait_for
from tests.integration.certs import TlsMaterial
from tests.integration.helpers import applied, make_topology, topology_doc
from tests.integration.nodes import Node

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)


def amqps(node: Node, cafile: Path, host: str = "localhost", **query: Path) -> str:
    params = "&".join(f"{k}={v}" for k, v in {"cafile": cafile, **query}.items())
    return f"amqps://guest:guest@{host}:{node.tls_port}/?{params}"


async def test_amqps_with_the_runs_ca_verifies_and_carries_events(
    private_node: Node, tls_material: TlsMaterial, prefix: str
) -> None:
    url = amqps(private_node, tls_material.ca)
    topology = make_topology(prefix, {"svc": {"keys": ["order.placed"]}})
    seen: list[str] = []
    router = Router()

    @router.on("order.placed")
    async def handle(event: dict[str, Any], ctx: Context) -> None:
        seen.append(ctx.id)

    async with applied(url, topology):
        rt = Runtime(topology, "svc", router, url=url, store=MemoryStore())
        await rt.start()
        try:
            async with Publisher(url, topology) as pub:
                await pub.publish("order.placed", {"order_id": "o-1"}, id=f"{prefix}-1")
            await wait_for(lambda: seen == [f"{prefix}-1"], message="the event over TLS")
            listed = await asyncio.to_thread(
                private_node.ctl, "list_connections", "-q", "ssl", "client_properties"
            )
            ours = [ln for ln in listed.splitlines() if "subscriber:svc" in ln]
            assert ours and all(ln.startswith("true\t") for ln in ours), listed
        finally:
            await rt.stop(5)


def _cases(m: TlsMaterial, good: Node, expired: Node) -> dict[str, tuple[str, str]]:
    return {
        "wrong CA": (amqps(good, m.other_ca), "self-signed certificate in certificate chain"),
        "expired certificate": (amqps(expired, m.ca), "certificate has expired"),
        "wrong host name": (amqps(good, m.ca, host=_another_name()), "mismatch"),
    }


def _another_name() -> str:
    """A name of this machine other than `localhost` (the certificate's only name) that reaches
    the node's 127.0.0.1 listener: the host name when it resolves there, else the address."""
    name = socket.gethostname()
    try:
        addresses = {a[4][0] for a in socket.getaddrinfo(name, None, socket.AF_INET)}
    except OSError:
        return "127.0.0.1"
    return name if name != "localhost" and "127.0.0.1" in addresses else "127.0.0.1"


@pytest.mark.parametrize("case", ["wrong CA", "expired certificate", "wrong host name"])
async def test_a_certificate_that_fails_verification_is_one_clear_error_never_a_fallback(
    case: str,
    private_node: Node,
    expired_tls_node: Node,
    tls_material: TlsMaterial,
    tmp_path: Path,
) -> None:
    url, why = _cases(tls_material, private_node, expired_tls_node)[case]
    for opener in (connect, connect_plain):
        with pytest.raises(BrokerUnavailable) as caught:
            await opener(url, "tls-test", timeout=10)
        message = str(caught.value)
        assert why in message and "TLS" in message and "\n" not in message, message
        assert "guest:guest" not in message

    topo = tmp_path / "topology.yaml"
    topo.write_text(yaml.safe_dump(topology_doc("tls", {"svc": {}})))
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bus.cli", "status"],
        env={**os.environ, "BUS_URL": url, "BUS_TOPOLOGY": str(topo)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and why in lines[0], done.stderr


async def test_a_url_that_turns_verification_off_is_refused(
    private_node: Node, tls_material: TlsMaterial
) -> None:
    url = amqps(private_node, tls_material.other_ca) + "&no_verify_ssl=1"
    with pytest.raises(ConfigError, match="no_verify_ssl is refused"):
        await connect(url)
    with pytest.raises(ConfigError, match="no_verify_ssl is refused"):
        await connect_plain(url)


async def test_a_client_certificate_named_in_the_url_is_presented_and_verified(
    private_node: Node, tls_material: TlsMaterial
) -> None:
    m = tls_material
    url = amqps(private_node, m.ca, certfile=m.client.cert, keyfile=m.client.key)
    conn = await connect(url, "client-cert")
    try:
        listed = await asyncio.to_thread(
            private_node.ctl, "list_connections", "-q", "peer_cert_subject", "client_properties"
        )
        line = next(ln for ln in listed.splitlines() if "client-cert" in ln)
        assert f"CN={m.client_cn}" in line, listed
    finally:
        await conn.close()
