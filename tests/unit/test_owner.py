"""Local claim owners: a live process is alive, a dead or reused pid is dead, the rest unknown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bus.stores.owner import local_owner, local_owner_dead

needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_this_process_is_alive() -> None:
    assert not local_owner_dead(local_owner())


def test_a_killed_process_is_dead_reaped_or_not() -> None:
    proc = sleeper()
    owner = local_owner(proc.pid)
    try:
        assert not local_owner_dead(owner), "alive while it runs"
    finally:
        proc.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not local_owner_dead(owner):  # a zombie already counts as dead
        assert time.monotonic() < deadline, "a SIGKILLed process still looks alive"
        time.sleep(0.01)
    proc.wait()
    assert local_owner_dead(owner)


@needs_proc
def test_a_reused_pid_is_a_different_process() -> None:
    kind, boot, ns, pid, start, nonce = local_owner().split(":")
    older = ":".join((kind, boot, ns, pid, str(int(start) - 1), nonce))
    assert local_owner_dead(older)


@pytest.mark.parametrize(
    "owner",
    [
        "",  # a row written before owners existed
        "pg:12345",  # another store's kind of owner
        "local:another-boot:4026531836:1:1:abcd",  # another machine, or before a reboot
        "local:{boot}:1:{pid}:1:abcd",  # another pid namespace (container)
        "local:garbage",
    ],
)
def test_what_cannot_be_checked_from_here_is_never_called_dead(owner: str) -> None:
    _, boot, _, pid, *_ = local_owner().split(":")
    assert not local_owner_dead(owner.format(boot=boot, pid=pid))
