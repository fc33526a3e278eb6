"""The first hour of a new user: every mistake through the real `bus` command is one line on
stderr that says what is wrong and what to do, with the contract's exit code (2 usage or
configuration, 1 runtime), never a traceback, never a password."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from bus.errors import NotApplied
from bus.produce.publisher import Publisher
from tests.integration.helpers import make_topology, topology_doc
from tests.integration.outbox_kit import fresh_postgres

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cret-pw"
# an unredacted password in a URL: scheme://user:password@
UNREDACTED = re.compile(r"://[^/\s:@]+:(?!\*\*\*@)[^@\s/]+@")


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]  # fragments of the one line, each required
    env: dict[str, str] = field(default_factory=dict)
    stdin: str = ""


def with_url(base: str, *, password: str | None = None, port: str | None = None,
             vhost: str | None = None) -> str:  # fmt: skip
    parts = urlsplit(base)
    user = parts.username or "guest"
    host = parts.hostname or "localhost"
    netloc = f"{user}:{password or parts.password or ''}@{host}:{port or parts.port or 5672}"
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{vhost}" if vhost else parts.path))


def cases(amqp_url: str, tmp: Path, pg_url: str) -> dict[str, Case]:
    """Each bad input a new user is likely to give, and what the CLI must answer."""
    sqlite_none = f"sqlite:///{tmp / 'no-such.db'}"
    apply_first = ("does not exist", "bus topology apply")
    return {
        "publish before apply": Case(
            ("publish", "order.placed", "--data", '{"order_id": "o-1"}'), 2, apply_first
        ),
        "dlq list before apply": Case(("dlq", "list", "email"), 2, apply_first),
        "run before apply": Case(("run", "email"), 2, apply_first, {"BUS_STORE_URL": "memory://"}),
        "wrong password": Case(
            ("status",), 1, ("authentication failed", "password in BUS_URL"),
            {"BUS_URL": with_url(amqp_url, password=SECRET)},
        ),
        "missing vhost": Case(
            ("status",), 1, ("vhost 'no-such-vhost' not found", "add_vhost"),
            {"BUS_URL": with_url(amqp_url, vhost="no-such-vhost")},
        ),
        "nothing listening": Case(
            ("status",), 1, ("connection refused", "rabbitmq-server"),
            {"BUS_URL": with_url(amqp_url, password=SECRET, port="1")},
        ),
        "not an amqp url": Case(
            ("status",), 2, ("BUS_URL must be amqp:// or amqps://",),
            {"BUS_URL": f"http://guest:{SECRET}@localhost:15672/"},
        ),
        "port not a number": Case(
            ("status",), 2, ("BUS_URL lists an unusable host 'localhost:amqp'",),
            {"BUS_URL": f"amqp://guest:{SECRET}@localhost:amqp/"},
        ),
        "handlers with a syntax error": Case(
            ("run", "email", "-t", str(tmp / "broken.yaml")), 2,
            ("cannot import h16_broken_handlers:router", "SyntaxError", "h16_broken_handlers.py"),
        ),
        "validate imports the handlers": Case(
            ("topology", "validate", "-t", str(tmp / "broken.yaml")), 2,
            ("subscribers.email.handlers: cannot import", "SyntaxError"),
        ),
        "purge without a terminal": Case(("dlq", "purge", "email"), 2, ("pass --yes",)),
        "empty id to publish": Case(
            ("publish", "order.placed", "--data", '{"order_id": "o-1"}', "--id", ""), 2,
            ("must not be empty",),
        ),
        "empty id to dlq show": Case(("dlq", "show", "email", ""), 2, ("must not be empty",)),
        "empty id to outbox retry": Case(
            ("outbox", "retry", "--id", ""), 2, ("must not be empty",)
        ),
        "data file missing": Case(
            ("publish", "order.placed", "--data", "@order.json"), 2, ("--data @order.json",)
        ),
        "stdin not json": Case(
            ("publish", "order.placed", "--data", "-"), 2, ("stdin is not JSON",), stdin="o-1"
        ),
        "outbox url of another database": Case(
            ("outbox", "status"), 2, ("BUS_OUTBOX_URL must be",),
            {"BUS_OUTBOX_URL": f"mysql://app:{SECRET}@db/shop"},
        ),
        "outbox not initialised (sqlite)": Case(
            ("outbox", "status"), 2, ("bus outbox init",), {"BUS_OUTBOX_URL": sqlite_none}
        ),
        "outbox not initialised (postgresql)": Case(
            ("outbox", "status"), 2, ("no bus_outbox table", "bus outbox init"),
            {"BUS_OUTBOX_URL": pg_url},
        ),
        "store url of another database": Case(
            ("run", "email"), 2, ("BUS_STORE_URL: unsupported store",),
            {"BUS_STORE_URL": f"redis://app:{SECRET}@cache/0"},
        ),
        "unknown subscriber": Case(("run", "emial"), 2, ("no subscriber 'emial'", "declared:")),
        "topology file missing": Case(
            ("status", "-t", str(tmp / "absent.yaml")), 2, ("cannot read",)
        ),
        "log level misspelt": Case(("--log-level", "LOUD", "status"), 2, ("--log-level 'LOUD'",)),
        "grace period not a number": Case(
            ("run", "email"), 2, ("Invalid value", "--grace-period"), {"BUS_GRACE_PERIOD": "soon"}
        ),
        "lease not a number": Case(
            ("run", "email"), 2, ("BUS_CLAIM_LEASE_SECONDS='soon'", "number of seconds"),
            {"BUS_CLAIM_LEASE_SECONDS": "soon"},
        ),
        "unknown option": Case(("status", "--verbose"), 2, ("No such option: --verbose",)),
        "demo prefix with a space": Case(("demo", "--prefix", "my demo"), 2, ("--prefix",)),
    }  # fmt: skip


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli-errors")
    (tmp / "h16_broken_handlers.py").write_text("from bus import Router\nrouter = Router(\n")
    return tmp


@pytest.fixture(scope="module")
def pg_without_outbox() -> Iterator[str]:
    """A fresh PostgreSQL database without `bus_outbox`, for as long as the module runs."""
    ready, done = threading.Event(), threading.Event()
    url: list[str] = []

    async def hold() -> None:
        async with fresh_postgres() as fresh:
            url.append(fresh)
            ready.set()
            await asyncio.to_thread(done.wait)

    holder = threading.Thread(target=asyncio.run, args=(hold(),))
    holder.start()
    assert ready.wait(30), "no PostgreSQL database for the outbox case"
    yield url[0]
    done.set()
    holder.join(30)


@pytest.fixture(scope="module")
def ran(amqp_url: str, broken_files: Path, pg_without_outbox: str) -> dict[str, Ran]:
    """Every case through the installed CLI, a few at a time (each pays Python's start-up)."""
    tmp, prefix = broken_files, f"e{os.getpid()}"
    topology = tmp / "topology.yaml"
    topology.write_text(yaml.safe_dump(topology_doc(prefix, {"email": {"keys": ["order.*"]}})))
    broken = topology_doc(prefix, {"email": {"handlers": "h16_broken_handlers:router"}})
    (tmp / "broken.yaml").write_text(yaml.safe_dump(broken))
    base = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    base |= {"BUS_URL": amqp_url, "BUS_TOPOLOGY": str(topology), "PYTHONPATH": f"{tmp}:{REPO}"}

    def run(case: Case) -> Ran:
        done = subprocess.run(
            [sys.executable, "-m", "bus.cli", *case.args], cwd=tmp, env=base | case.env,
            input=case.stdin, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return Ran(done.returncode, done.stdout, done.stderr)

    table = cases(amqp_url, tmp, pg_without_outbox)
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(table, pool.map(run, table.values()), strict=True))


def test_the_table_holds_at_least_fifteen_bad_inputs(amqp_url: str, tmp_path: Path) -> None:
    assert len(cases(amqp_url, tmp_path, "postgresql://x/y")) >= 15


@pytest.mark.parametrize("name", list(cases("amqp://guest:guest@localhost:5672/", Path("."), "")))
def test_a_bad_input_is_one_line_with_the_right_exit_code_and_no_password(
    ran: dict[str, Ran], amqp_url: str, broken_files: Path, name: str
) -> None:
    case = cases(amqp_url, broken_files, "")[name]
    result = ran[name]
    everything = result.out + result.err
    assert "Traceback" not in everything, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.err}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert result.code == case.code, f"exit {result.code}, expected {case.code}: {line}"
    for fragment in case.says:
        assert fragment in line, f"{fragment!r} missing from: {line}"
    assert SECRET not in everything
    assert not UNREDACTED.search(everything), everything
    if name == "wrong password":  # the broker is running: do not tell the user to start one
        assert "rabbitmq-server" not in line


def test_debug_after_the_subcommand_shows_the_traceback(amqp_url: str, broken_files: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    env |= {"BUS_URL": with_url(amqp_url, password=SECRET, port="1")}
    done = subprocess.run(
        [sys.executable, "-m", "bus.cli", "status", "--debug", "-t", str(REPO / "topology/topology.yaml")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "BrokerUnavailable" in done.stderr


async def test_publisher_before_apply_raises_not_applied(amqp_url: str, prefix: str) -> None:
    topology = make_topology(prefix, {"email": {"keys": ["order.placed"]}})
    async with Publisher(amqp_url, topology) as pub:
        with pytest.raises(NotApplied, match=r"exchange '.*\.events' does not exist.*apply"):
            await pub.publish("order.placed", {"order_id": "o-1"})


async def test_publisher_refuses_an_empty_id_before_sending(amqp_url: str, prefix: str) -> None:
    from bus.errors import InvalidEvent

    topology = make_topology(prefix, {"email": {"keys": ["order.placed"]}})
    pub = Publisher(amqp_url, topology)  # not even connected: refused first
    with pytest.raises(InvalidEvent, match="id is empty"):
        await pub.publish("order.placed", {"order_id": "o-1"}, id="")
