"""Private RabbitMQ nodes for the tests that stop, kill, alarm or reconfigure a broker, and for
the RabbitMQ 4 pass of the suite.

The machine's own RabbitMQ (`BUS_URL`, localhost:5672) is never touched by these tests. Each
node here is a `rabbitmq-server` run in the foreground as a child of the test run, with its own
node name, AMQP/TLS/distribution ports and folders (owned by the `rabbitmq` user), sharing an
Erlang cookie so `rabbitmqctl -n` and `join_cluster` work. The machine's rabbitmq.conf pins
5672, so every node gets its own config file rather than `RABBITMQ_NODE_PORT`.

Where a node's RabbitMQ comes from is an `Install`:
- `MACHINE`: Debian's package on this machine (3.10.8 here; what the default pass uses);
- `rabbitmq4()`: RabbitMQ 4.0.x from Debian trixie, which needs a newer glibc than this machine
  has, so it lives in a root folder of its own (`scripts/provision` debootstraps it under
  `~/.cache/bus/rabbitmq-4.0`, with /proc and /dev bind-mounted) and runs under `chroot`. Its
  nodes keep their folders inside that root. `BUS_TEST_BROKER=4.0` makes every private node,
  and the broker the suite shares, a 4.0 node.

Nodes are cheap to kill: `stop_all()` SIGKILLs each node's process group and deletes its folder.
A run that was itself killed leaves its folder behind with its owner's pid; the next run reaps
those (`reap_orphans()`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from demo.stubs import free_port

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")  # Debian's scripts, below the root-dropping wrappers
RABBITMQ_HOME = Path("/var/lib/rabbitmq")  # the rabbitmq user's home: the Erlang cookie
NODE_ROOT = Path(tempfile.gettempdir())
# the RabbitMQ 4 root folder (scripts/provision makes it); BUS_RABBITMQ4_ROOT overrides
RABBITMQ4_ROOT = Path(
    os.environ.get("BUS_RABBITMQ4_ROOT")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bus" / "rabbitmq-4.0"
)
FOLDER_PREFIX = "bus-node-"
START_TIMEOUT = 90.0
HOW_TO_GET_NODES = (
    "private RabbitMQ nodes need Debian's rabbitmq-server ({bin}) and root or the rabbitmq user "
    "(apt-get install rabbitmq-server)"
)


class NodeError(RuntimeError):
    """A private node did not start, stop or answer as asked."""


@dataclass(frozen=True)
class Install:
    """Where a node's RabbitMQ comes from: this machine (`root` None) or a root folder run
    under chroot. Paths a node's VM reads are written as it sees them (`inside`)."""

    version: str
    root: Path | None = None

    @property
    def node_root(self) -> Path:
        """Where node folders go, as this process sees it."""
        return NODE_ROOT if self.root is None else self.root / "tmp"

    def inside(self, path: Path) -> str:
        """*path* (as this process sees it) as the node's VM sees it."""
        if self.root is None:
            return str(path)
        return "/" + str(path.relative_to(self.root))

    def command(self, program: str) -> list[str]:
        """The argv that runs one of RabbitMQ's scripts as the rabbitmq user."""
        if self.root is None:
            return [str(RABBITMQ_BIN / program)]
        uid, gid = self.owner()
        return ["chroot", f"--userspec={uid}:{gid}", str(self.root), f"{RABBITMQ_BIN}/{program}"]

    def popen_user(self) -> dict[str, object]:
        """Popen arguments that drop to the rabbitmq user (chroot does it itself)."""
        return _as_rabbitmq() if self.root is None else {}

    def owner(self) -> tuple[int, int]:
        """The rabbitmq user's uid and gid in this install."""
        if self.root is None:
            rabbit = pwd.getpwnam("rabbitmq")
            return rabbit.pw_uid, rabbit.pw_gid
        for line in (self.root / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == "rabbitmq":
                return int(fields[2]), int(fields[3])
        raise NodeError(f"no rabbitmq user in {self.root}/etc/passwd")

    def chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, *self.owner())

    def unavailable_reason(self) -> str | None:
        """Why this machine cannot run nodes of this install, or None when it can."""
        if self.root is None:
            return unavailable_reason()
        fix = "run scripts/provision (as root): it builds that folder and mounts /proc and /dev"
        if os.geteuid() != 0:
            return f"RabbitMQ {self.version} nodes run under chroot, which needs root; {fix}"
        if not (self.root / "usr/lib/rabbitmq/bin/rabbitmq-server").exists():
            return f"no RabbitMQ {self.version} in {self.root}: {fix}"
        mounts = Path("/proc/mounts").read_text()
        for sub in ("proc", "dev"):
            if f" {self.root / sub} " not in mounts:
                return f"{self.root / sub} is not mounted: {fix}"
        return None


MACHINE = Install("3.10")


def rabbitmq4() -> Install:
    """RabbitMQ 4.0.x from the root folder that scripts/provision builds."""
    return Install("4.0", RABBITMQ4_ROOT)


def selected_install() -> Install:
    """The install of this run: `BUS_TEST_BROKER=4.0` picks RabbitMQ 4, anything else the
    machine's own package."""
    wanted = os.environ.get("BUS_TEST_BROKER", "").strip()
    if wanted in ("", "3", "3.10", "machine"):
        return MACHINE
    if wanted in ("4", "4.0"):
        return rabbitmq4()
    raise NodeError(f"BUS_TEST_BROKER={wanted!r}: use 3.10 (the machine's) or 4.0")


def unavailable_reason() -> str | None:
    """Why this machine cannot run private nodes of its own package, or None when it can."""
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        return HOW_TO_GET_NODES.format(bin=RABBITMQ_BIN)
    try:
        rabbit = pwd.getpwnam("rabbitmq")
    except KeyError:
        return "private RabbitMQ nodes need the rabbitmq user (apt-get install rabbitmq-server)"
    if os.geteuid() not in (0, rabbit.pw_uid):
        return HOW_TO_GET_NODES.format(bin=RABBITMQ_BIN)
    return None


def answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _as_rabbitmq() -> dict[str, object]:
    """Popen arguments that run a child as the rabbitmq user, with its home (the cookie)."""
    if os.geteuid() == 0:
        return {"user": "rabbitmq", "group": "rabbitmq", "extra_groups": []}
    return {}


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a node's TLS listener: the CA it trusts for client certificates, its own
    certificate and key."""

    cacert: Path
    cert: Path
    key: Path


@dataclass
class Node:
    """One private RabbitMQ node. `start()` then `wait_started()`; `ctl()` runs rabbitmqctl."""

    label: str
    token: str
    base: Path
    install: Install = MACHINE
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    tls: TlsFiles | None = None
    tls_port: int | None = None
    extra_config: list[str] = field(default_factory=list)  # more rabbitmq.conf lines
    process: subprocess.Popen[bytes] | None = None

    @property
    def version(self) -> str:
        """The RabbitMQ release line of this node's install ("3.10", "4.0")."""
        return self.install.version

    @property
    def name(self) -> str:
        return f"bus-{self.token}-{self.label}@localhost"

    @property
    def pid_file(self) -> Path:
        return self.base / "node.pid"

    @property
    def log_file(self) -> Path:
        return self.base / "log" / f"{self.name}.log"

    def url(self, user: str = "guest", password: str = "guest", vhost: str = "/") -> str:
        path = "" if vhost == "/" else quote(vhost, safe="")
        return (
            f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/{path}"
        )

    # -- lifecycle -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Write the node's folders and config (owned by the rabbitmq user)."""
        for sub in ("", "mnesia", "log"):
            (self.base / sub).mkdir(exist_ok=True)
            self.install.chown(self.base / sub)
        (self.base / "owner.pid").write_text(str(os.getpid()))
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")  # not the machine's: it names its node
        lines = [f"listeners.tcp.local = 127.0.0.1:{self.port}", "loopback_users.guest = true"]
        lines += self.extra_config
        if self.tls is not None:
            inside = self.install.inside
            self.tls_port = self.tls_port or free_port()
            lines += [
                f"listeners.ssl.local = 127.0.0.1:{self.tls_port}",
                f"ssl_options.cacertfile = {inside(self.tls.cacert)}",
                f"ssl_options.certfile = {inside(self.tls.cert)}",
                f"ssl_options.keyfile = {inside(self.tls.key)}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        (self.base / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        for f in ("enabled_plugins", "rabbitmq-env.conf", "rabbitmq.conf", "owner.pid"):
            self.install.chown(self.base / f)

    def _env(self) -> dict[str, str]:
        base = self.install.inside(self.base)
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(RABBITMQ_HOME),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": f"{base}/mnesia",
            "RABBITMQ_LOG_BASE": f"{base}/log",
            "RABBITMQ_PID_FILE": f"{base}/node.pid",
            "RABBITMQ_CONFIG_FILE": f"{base}/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{base}/advanced.config",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{base}/enabled_plugins",
            "RABBITMQ_CONF_ENV_FILE": f"{base}/rabbitmq-env.conf",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # two cores shared with other work: no busy-waiting schedulers
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                "-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none "
                "+sbwtdio none"
            ),
        }

    def start(self) -> None:
        """Start the node's VM (returns at once; `wait_started()` waits for it)."""
        if self.process is not None and self.process.poll() is None:
            raise NodeError(f"{self.name} is already running")
        self.pid_file.unlink(missing_ok=True)
        with open(self.base / "console.log", "ab") as console:
            self.process = subprocess.Popen(
                self.install.command("rabbitmq-server"),
                env=self._env(),
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop_all kills the whole tree
                **self.install.popen_user(),  # type: ignore[arg-type]
            )

    def wait_started(self, timeout: float = START_TIMEOUT) -> None:
        """Until the node accepts AMQP connections and has booted; NodeError after *timeout*."""
        deadline = time.monotonic() + timeout
        while not answers(self.port):
            if self.process is None or self.process.poll() is not None:
                raise NodeError(f"{self.name} exited while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise NodeError(
                    f"{self.name} not listening after {timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.2)
        left = max(5, int(deadline - time.monotonic()))
        self.ctl("await_startup", "--timeout", str(left), timeout=left + 30)

    def stop(self, timeout: float = 60.0) -> None:
        """A graceful stop (SIGTERM: the script runs the node's own shutdown), then wait."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """kill -9 of the node's VM and everything it started: no shutdown at all."""
        proc = self.process
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)

    def vm_pid(self) -> int:
        """The pid of the node's Erlang VM (beam.smp)."""
        return int(self.pid_file.read_text().strip())

    def kill_vm(self) -> None:
        """kill -9 of the Erlang VM only, as a crashed host or OOM killer would."""
        os.kill(self.vm_pid(), signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(30)

    # -- rabbitmqctl -----------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """`rabbitmqctl -n NODE ARGS` as the rabbitmq user; NodeError with its output if it fails."""
        done = subprocess.run(
            [*self.install.command("rabbitmqctl"), "-n", self.name, *args],
            env={k: v for k, v in self._env().items() if not k.startswith("RABBITMQ_")},
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **self.install.popen_user(),  # type: ignore[arg-type]
        )
        if check and done.returncode != 0:
            raise NodeError(
                f"rabbitmqctl -n {self.name} {' '.join(args)} exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()}"
            )
        return done.stdout

    def write_file(self, name: str, text: str) -> Path:
        """A file in the node's folder that the rabbitmq user can read (e.g. definitions).
        `inside(path)` is its name for rabbitmqctl."""
        path = self.base / name
        path.write_text(text)
        self.install.chown(path)
        return path

    def inside(self, path: Path) -> str:
        """*path* as this node's rabbitmqctl sees it (under chroot, relative to its root)."""
        return self.install.inside(path)

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for f in (self.base / "console.log", self.log_file):
            with contextlib.suppress(OSError):
                out += [f"--- {f}", *f.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(out)


class Nodes:
    """Every private node of one test run: creates them, stops them all at the end."""

    def __init__(self, install: Install = MACHINE) -> None:
        self.install = install
        self.token = uuid.uuid4().hex[:6]
        self.nodes: list[Node] = []
        self.folders: list[Path] = []

    def new(self, label: str, *, tls: TlsFiles | None = None, config: Iterable[str] = ()) -> Node:
        """A prepared node (not started); *config* adds rabbitmq.conf lines."""
        folder = self.install.node_root
        base = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{self.token}-{label}-", dir=folder))
        base.chmod(0o755)
        node = Node(
            label=label,
            token=self.token,
            base=base,
            install=self.install,
            tls=tls,
            extra_config=list(config),
        )
        node.prepare()
        self.nodes.append(node)
        return node

    def start(self, nodes: Iterable[Node], timeout: float = START_TIMEOUT) -> None:
        """Start *nodes* side by side and wait for each (one deadline for all)."""
        nodes = list(nodes)
        for n in nodes:
            n.start()
        deadline = time.monotonic() + timeout
        for n in nodes:
            n.wait_started(max(5.0, deadline - time.monotonic()))

    def folder(self, label: str) -> Path:
        """A folder the rabbitmq user can read (certificates, definitions), removed at the end;
        `chown_all()` hands what was written into it to that user."""
        path = Path(
            tempfile.mkdtemp(
                prefix=f"{FOLDER_PREFIX}{self.token}-{label}-", dir=self.install.node_root
            )
        )
        path.chmod(0o755)
        (path / "owner.pid").write_text(str(os.getpid()))
        self.folders.append(path)
        return path

    def cluster(self, label: str, size: int = 3) -> list[Node]:
        """*size* nodes joined into one cluster (the first is the seed)."""
        nodes = [self.new(f"{label}{i}") for i in range(1, size + 1)]
        self.start(nodes)
        seed = nodes[0]
        for n in nodes[1:]:
            n.ctl("stop_app")
            n.ctl("join_cluster", seed.name)
            n.ctl("start_app")
        for n in nodes[1:]:
            n.ctl("await_startup", "--timeout", "60", timeout=90)
        return nodes

    def stop_all(self) -> None:
        for n in self.nodes:
            n.kill()
            shutil.rmtree(n.base, ignore_errors=True)
        self.nodes.clear()
        for f in self.folders:
            shutil.rmtree(f, ignore_errors=True)
        self.folders.clear()


def chown_all(folder: Path, install: Install = MACHINE) -> None:
    """Give *folder* and what it holds to the rabbitmq user (a node reads its keys as that user)."""
    for path in [folder, *folder.iterdir()]:
        install.chown(path)


def reap_orphans(install: Install = MACHINE) -> list[str]:
    """Kill the nodes of earlier runs that died without stopping them; their folder names."""
    reaped = []
    for base in install.node_root.glob(f"{FOLDER_PREFIX}*"):
        try:
            owner = int((base / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        with contextlib.suppress(OSError, ValueError):
            pid = int((base / "node.pid").read_text())
            if _is_node_of(pid, base):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
        reaped.append(base.name)
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_node_of(pid: int, base: Path) -> bool:
    """Whether *pid* is still the VM whose folder is *base* (pids get reused). The VM's command
    line does not name the folder: its environment does (RABBITMQ_MNESIA_BASE and the others),
    so a check of the command line alone let every orphan VM live on."""
    folder = str(base).encode()
    for part in ("cmdline", "environ"):
        try:
            if folder in Path(f"/proc/{pid}/{part}").read_bytes():
                return True
        except OSError:
            return False
    return False
