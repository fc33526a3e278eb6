"""Integration fixtures: private RabbitMQ nodes (tests/integration/nodes.py), the witness that the
shared broker stayed up, and the fault-injection report printed at the end of the run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.certs import TlsMaterial, make_material
from tests.integration.nodes import (
    Node,
    Nodes,
    TlsFiles,
    chown_all,
    reap_orphans,
    unavailable_reason,
)
from tests.integration.witness import ConnectionWitness

_ROWS: list[dict[str, Any]] = []
COLUMNS = ("scenario", "sent", "confirmed", "handled", "duplicates", "lost", "seconds")
# .ci/run sets this: there a machine that cannot start private nodes is a failure, not a skip
REQUIRE_NODES = os.environ.get("BUS_PRIVATE_NODES") == "required"


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
def nodes() -> Iterator[Nodes]:
    """Private RabbitMQ nodes of this run; every one is stopped at the end, also on failure."""
    reason = unavailable_reason()
    if reason is not None:
        if REQUIRE_NODES:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    reap_orphans()
    owned = Nodes()
    try:
        yield owned
    finally:
        owned.stop_all()


@pytest.fixture(scope="session")
def tls_material(nodes: Nodes) -> TlsMaterial:
    """A CA made for this run, with server, expired-server and client certificates."""
    folder = nodes.folder("tls")
    material = make_material(folder)
    chown_all(folder)
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
    tr.section("fault injection: events sent, confirmed, handled once, duplicates absorbed, lost")
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in _ROWS)) for c in COLUMNS]
    tr.write_line("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for r in _ROWS:
        tr.write_line(
            "  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(COLUMNS, widths, strict=True))
        )
    out = Path(".bus/fault-report.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(_ROWS, indent=2))
