"""Who holds a claim, and whether that process still lives (for stores on one machine).

A claim's lease bounds how long a *crashed* holder blocks an id (30 s); a live holder renews
it. Waiting out the lease after a SIGKILL is what made a replacement sit on the redelivered
event for half a minute. So each claim also names its owner, and a claimer that finds an id
BUSY asks whether the owner still exists; only a provably dead owner's claim is taken over
early. A live process counts as alive however blocked its event loop is (unlike a heartbeat),
so two live replicas racing on one id still run the handler once.

A local owner is `local:<boot id>:<pid namespace>:<pid>:<start time>:<nonce>`: the boot id
and the pid namespace say whether the pid can be checked from here at all (another machine,
another container, or a reboot: we cannot tell, and the lease decides); the start time says
whether the pid still belongs to the same process (pids are reused); the nonce tells apart two
stores of one process. PostgreSQL has its own, network-wide owners (bus.stores.postgres).
"""

from __future__ import annotations

import os
import uuid
from functools import cache
from pathlib import Path

PREFIX = "local"


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


@cache
def _machine() -> tuple[str, str]:
    """(boot id, pid namespace) of this process; empty where the platform has no /proc."""
    boot = _read("/proc/sys/kernel/random/boot_id") or os.uname().nodename
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        namespace = ""
    return boot.replace(":", "-"), "".join(c for c in namespace if c.isdigit())


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of *pid* from /proc, or None when there is no such process."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text.rpartition(")")[2].split()  # the command name may hold spaces and ")"
    return fields[0], fields[19]  # fields 3 and 22 of proc(5)


def _start_time(pid: int) -> str:
    stat = _stat(pid)
    return stat[1] if stat else ""


def local_owner(pid: int | None = None) -> str:
    """A new owner id for a store opened by process *pid* (default: this one)."""
    pid = os.getpid() if pid is None else pid
    boot, namespace = _machine()
    return f"{PREFIX}:{boot}:{namespace}:{pid}:{_start_time(pid)}:{uuid.uuid4().hex[:8]}"


def local_owner_dead(owner: str) -> bool:
    """True only when *owner* is a process of this machine that no longer runs."""
    parts = owner.split(":")
    if len(parts) != 6 or parts[0] != PREFIX:
        return False  # not ours to judge (an older row, another kind of owner)
    _, boot, namespace, pid_text, start, _nonce = parts
    if (boot, namespace) != _machine() or not pid_text.isdigit():
        return False  # another machine, container or boot: the lease decides
    pid = int(pid_text)
    if Path("/proc/self/stat").exists():
        stat = _stat(pid)
        return stat is None or stat[0] in ("Z", "X") or stat[1] != start
    try:  # no /proc: the pid alone (a reused pid only makes us wait for the lease)
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
