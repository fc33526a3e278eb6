"""Integration fixtures: private RabbitMQ nodes (tests/integration/nodes.py), the witness that the
shared broker stayed up, and the fault-injection report printed at the end of the run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import default_amqp_url
from tests.integration.certs import TlsMaterial, make_material
from tests.integration.nodes import (
    Install,
    Node,
    Nodes,
    TlsFiles,
    chown_all,
    reap_orphans,
    selected_install,
)
from tests.integration.witness import ConnectionWitness

_ROWS: list[dict[str, Any]] = []
COLUMNS = ("scenario", "sent", "confirmed", "handled", "duplicates", "lost", "seconds")
# .ci/run sets this: there a machine that cannot start private nodes is a failure, not a skip
REQUIRE_NODES = os.environ.get("BUS_PRIVATE_NODES") == "required"


@pytest.fixture(scope="session")
def broker_install() -> Install:
    """Where this run's private nodes come from: the machine's RabbitMQ, or RabbitMQ 4.0 when
    `BUS_TEST_BROKER=4.0` (the second pass of `make test`)."""
    return selected_install()


@pytest.fixture(scope="session")
def broker_version(broker_install: Install) -> str:
    """The RabbitMQ release line the suite runs against: "3.10" or "4.0"."""
    return broker_install.version


@pytest.fixture(scope="session")
def amqp_url(broker_install: Install, request: pytest.FixtureRequest) -> Iterator[str]:
    """The broker the tests share. In the default pass: `BUS_TEST_URL`, the local broker, or
    testcontainers (tests/conftest.py). In the RabbitMQ 4 pass: one private 4.0 node for the
    whole run, stopped at the end."""
    if broker_install.root is None:
        yield from default_amqp_url()
        return
    nodes: Nodes = request.getfixturevalue("nodes")
    node = nodes.new("shared")
    nodes.start([node])
    yield node.url()


@pytest.fixture(scope="session", autouse=True)
def shared_broker_left_running(amqp_url: str) -> Iterator[None]:
    """The broker the tests share (`BUS_TEST_URL` or the machine's localhost:5672) must still be
    up, never stopped or restarted, when the run ends: fault tests use private nodes only."""
    with ConnectionWitness(amqp_url) as witness:
        yield
        problem = witness.problem()
    if problem:
        pytest.fail(
            f"the shared RabbitMQ was stopped or restarted during the run: {problem}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def nodes(broker_install: Install) -> Iterator[Nodes]:
    """Private RabbitMQ nodes of this run; every one is stopped at the end, also on failure."""
    reason = broker_install.unavailable_reason()
    if reason is not None:
        if REQUIRE_NODES or broker_install.root is not None:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    reap_orphans(broker_install)
    owned = Nodes(broker_install)
    try:
        yield owned
    finally:
        owned.stop_all()


@pytest.fixture(scope="session")
def tls_material(nodes: Nodes) -> TlsMaterial:
    """A CA made for this run, with server, expired-server and client certificates."""
    folder = nodes.folder("tls")
    material = make_material(folder)
    chown_all(folder, nodes.install)
    return material


@pytest.fixture(scope="session")
def private_node(nodes: Nodes, tls_material: TlsMaterial) -> Node:
    """One private node for tests that stop, alarm or reconfigure a broker, with a TLS
    listener too (`tls_port`: the run's CA, a certificate for `localhost`, client certificates
    verified when presented). A test that disturbs it restores it before it ends."""
    m = tls_material
    node = nodes.new("single", tls=TlsFiles(m.ca, m.server.cert, m.server.key))
    nodes.start([node])
    return node


@pytest.fixture(scope="session")
def expired_tls_node(nodes: Nodes, tls_material: TlsMaterial) -> Node:
    """A private node whose TLS listener presents an expired certificate."""
    m = tls_material
    node = nodes.new("expired", tls=TlsFiles(m.ca, m.expired.cert, m.expired.key))
    nodes.start([node])
    return node


@pytest.fixture(scope="session")
def cluster(nodes: Nodes) -> list[Node]:
    """Three private nodes joined into one cluster."""
    return nodes.cluster("c", 3)


@pytest.fixture
def fault_report() -> Any:
    """Call with the counts of one scenario: fault_report(scenario=..., sent=..., ...)."""

    def record(**row: Any) -> None:
        _ROWS.append(row)

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _ROWS:
        return
    tr = terminalreporter
    version = selected_install().version
    tr.section(
        f"fault injection on RabbitMQ {version}: events sent, confirmed, handled once, "
        "duplicates absorbed, lost"
    )
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in _ROWS)) for c in COLUMNS]
    tr.write_line("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for r in _ROWS:
        tr.write_line(
            "  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(COLUMNS, widths, strict=True))
        )
    out = Path(f".bus/fault-report-{version}.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(_ROWS, indent=2))
