"""Stand-ins for the services' outside world, on loopback: an SMTP sink and a flaky warehouse.

The one copy used by `bus demo` (threads of the demo process), by the integration tests, and by
the compose file's `warehouse` container (`python -m demo.stubs warehouse --port 8081`).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiosmtpd.controller import Controller

FOLLOW_UP_SUBJECT = b"Subject: How was your order"


_PORT_SPAN = 10_000  # how far below the ephemeral range free_port looks
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago, for a server started a moment later.

    Below the kernel's ephemeral range, never in it: the port that binding port 0 gives comes
    from that range, from which every outgoing connection also takes its local port, so one
    could take it before the server bound it (`Address already in use`). The demo met that
    once its subscribers held two connections each. Never the same port twice per process.
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - _PORT_SPAN), low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port on loopback below {low}")


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default, and below macOS's 49152


class _Started:
    """`start()`/`stop()`, also as a context manager (`with MailSink() as sink:`)."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class MailSink(_Started):
    """An SMTP server (aiosmtpd) that accepts every mail and keeps it."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._controller: Any = None
        self.url = ""

    @property
    def delivered(self) -> int:
        return len(self.messages)

    @property
    def follow_ups(self) -> int:
        """The "How was your order?" mails: the email service's delayed event."""
        with self._lock:
            return sum(1 for m in self.messages if m.get("Subject", "").startswith("How was"))

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = message_from_bytes(bytes(envelope.content or b""))
        with self._lock:
            self.messages.append(mail)
        return "250 OK"

    def start(self) -> Self:
        port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=port)
        self._controller.start()
        self.url = f"smtp://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@dataclass
class WarehouseStats:
    calls: int = 0
    failed: int = 0  # answered 503
    accepted: int = 0  # answered 201
    recovered: int = 0  # orders accepted after at least one 503: retried, then succeeded


@dataclass
class Call:
    body: dict[str, Any]
    headers: dict[str, str]
    status: int


@dataclass
class _Ledger:
    fail_first: int
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, int]:
        """The status for this call, and its number."""
        with self.lock:
            status = 503 if len(self.calls) < self.fail_first else 201
            self.calls.append(Call(body, headers, status))
            return status, len(self.calls)

    def stats(self) -> WarehouseStats:
        with self.lock:
            answers: dict[str, list[int]] = {}
            for call in self.calls:
                answers.setdefault(str(call.body.get("order_id", "?")), []).append(call.status)
        seen = [s for statuses in answers.values() for s in statuses]
        recovered = sum(1 for s in answers.values() if 201 in s and 503 in s[: s.index(201)])
        return WarehouseStats(len(seen), seen.count(503), seen.count(201), recovered)


class _Backlogged(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a burst of fulfillment's prefetch (32 calls
    # at once, e.g. when a backlog drains) would see connection resets instead of answers
    request_queue_size = 128
    daemon_threads = True


class FlakyWarehouse(_Started):
    """A warehouse webhook: the first *fail_first* calls get HTTP 503, every later one 201 with
    a reference. Every call is kept (`calls`: body, headers, status)."""

    def __init__(self, fail_first: int = 0, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._ledger = _Ledger(fail_first)
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self.url = ""
        self.echo = False  # print one line per call (the compose container's log)

    @property
    def calls(self) -> list[Call]:
        with self._ledger.lock:
            return list(self._ledger.calls)

    def stats(self) -> WarehouseStats:
        return self._ledger.stats()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        ledger, warehouse = self._ledger, self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = {}
                body = body if isinstance(body, dict) else {}
                status, n = ledger.answer(body, dict(self.headers))
                if warehouse.echo:
                    print(f"warehouse: order {body.get('order_id')} -> {status}", flush=True)
                payload = json.dumps({"reference": f"WH-{n}"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # a health check
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the calls are kept (and echoed when asked)

        return Handler

    def start(self) -> Self:
        self._server = _Backlogged(self._address, self._handler())
        threading.Thread(
            target=self._server.serve_forever, name="stub-warehouse", daemon=True
        ).start()
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}/orders"
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (the compose container)."""
        self._server = _Backlogged(self._address, self._handler())
        try:
            self._server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self._server.server_close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m demo.stubs", description=__doc__)
    sub = p.add_subparsers(dest="stub", required=True)
    wh = sub.add_parser("warehouse", help="serve the warehouse webhook (POST /orders)")
    wh.add_argument("--host", default="0.0.0.0")
    wh.add_argument("--port", type=int, default=8081)
    wh.add_argument("--fail-first", type=int, default=0, help="answer this many calls with 503")
    args = p.parse_args(argv)
    warehouse = FlakyWarehouse(args.fail_first, host=args.host, port=args.port)
    warehouse.echo = True
    print(f"warehouse: listening on {args.host}:{args.port}", flush=True)
    warehouse.serve_forever()


if __name__ == "__main__":
    main()
