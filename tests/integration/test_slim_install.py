"""`pip install bus` alone: the library and its CLI without any extra, as a subscriber's image
has it. It runs a subscriber on the real broker; what needs an extra says which, in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

CHECKOUT = Path(__file__).resolve().parents[2]
EXTRAS_ONLY = (  # distributions the extras bring, never the core
    "asyncpg", "sqlalchemy", "fastapi", "starlette", "uvicorn", "jinja2", "python-multipart",
    "aiosmtplib", "aiosmtpd", "httpx", "fpdf2", "uvloop", "opentelemetry-api",
)  # fmt: skip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HANDLERS = """
from pathlib import Path
from bus import Context, Router

router = Router()

@router.on("greeting.sent")
async def note(event: dict, ctx: Context) -> None:
    Path(__file__).with_name("handled.txt").open("a").write(ctx.id + "\\n")
"""


@pytest.fixture(scope="module")
def slim_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the checkout installed and no extras."""
    venv = tmp_path_factory.mktemp("slim") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", str(CHECKOUT)], check=True, timeout=240)
    return venv


def installed(venv: Path) -> set[str]:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {line.split("==")[0].lower().replace("_", "-") for line in out.splitlines()}


def test_the_core_install_carries_none_of_the_extras_packages(slim_venv: Path) -> None:
    have = installed(slim_venv)
    assert "bus" in have and "aio-pika" in have
    assert not have & set(EXTRAS_ONLY), (
        f"the core install brought {sorted(have & set(EXTRAS_ONLY))}"
    )


def bus_env(folder: Path, amqp_url: str, prefix: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(folder),
        "PYTHONPATH": str(folder),
        "BUS_URL": amqp_url,
        "BUS_TOPOLOGY": str(folder / "topology.yaml"),
        "BUS_STORE_URL": f"sqlite:///{folder}/processed.db",
        "BUS_OUTBOX_URL": f"sqlite:///{folder}/outbox.db",
    }


def test_a_subscriber_runs_on_the_core_install(
    slim_venv: Path, tmp_path: Path, amqp_url: str, prefix: str
) -> None:
    (tmp_path / f"{prefix}_hello.py").write_text(HANDLERS)
    exchange = f"{prefix}.events"
    topology = {
        "version": 1,
        "exchanges": {exchange: {"type": "topic"}},
        "events": {"greeting.sent": {"exchange": exchange}},
        "subscribers": {
            "hello": {
                "handlers": f"{prefix}_hello:router",
                "queue": f"{prefix}.hello",
                "queue_type": "classic",
                "bindings": [{"exchange": exchange, "keys": ["greeting.sent"]}],
                "retry": {"delays": ["200ms"]},
            }
        },
    }
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(topology))
    env = bus_env(tmp_path, amqp_url, prefix)
    bus = str(slim_venv / "bin" / "bus")
    subprocess.run([bus, "topology", "apply"], env=env, cwd=tmp_path, check=True, timeout=60)
    runner = subprocess.Popen([bus, "run", "hello"], env=env, cwd=tmp_path)
    try:
        subprocess.run(
            [bus, "publish", "greeting.sent", "--data", "{}", "--id", "hi-1"],
            env=env, cwd=tmp_path, check=True, timeout=60,
        )  # fmt: skip
        handled = tmp_path / "handled.txt"
        deadline = time.monotonic() + 30
        while not (handled.exists() and "hi-1" in handled.read_text()):
            assert runner.poll() is None, f"bus run exited {runner.returncode}"
            assert time.monotonic() < deadline, "the subscriber never handled hi-1"
            time.sleep(0.1)
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(30)
        subprocess.run([bus, "topology", "teardown", "--yes"], env=env, cwd=tmp_path, timeout=60)
    assert runner.returncode == 0


@pytest.mark.parametrize(
    ("argv", "extra_env", "line"),
    [
        (["ui"], {}, 'bus ui needs the "ui" extra: pip install "bus[ui]"'),
        (
            ["outbox", "status"],
            {"BUS_OUTBOX_URL": "postgresql://localhost/test"},
            'needs the "postgres" extra: pip install "bus[postgres]"',
        ),
    ],
)
def test_a_command_that_needs_a_missing_extra_says_which_in_one_line(
    slim_venv: Path, tmp_path: Path, amqp_url: str, prefix: str,
    argv: list[str], extra_env: dict[str, str], line: str,
) -> None:  # fmt: skip
    (tmp_path / "topology.yaml").write_text(
        yaml.safe_dump({"version": 1, "exchanges": {f"{prefix}.events": {"type": "topic"}}})
    )
    env = {**bus_env(tmp_path, amqp_url, prefix), **extra_env}
    done = subprocess.run(
        [str(slim_venv / "bin" / "bus"), *argv], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done
    assert line in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, (
        done.stderr
    )
