"""`/metrics`, `/healthz` and `/readyz` over HTTP, served from a thread.

`/healthz` asks the event loop to answer within two seconds, so a blocked loop fails liveness;
`/readyz` is the runtime's own view: connected and consuming.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class HealthServer:
    """Serves probes and metrics on *port* until `close()`."""

    def __init__(
        self,
        port: int,
        registry: CollectorRegistry,
        loop: asyncio.AbstractEventLoop,
        ready: Callable[[], bool],
        host: str = "0.0.0.0",
        why_not: Callable[[], str] | None = None,
    ) -> None:
        self._metrics = make_wsgi_app(registry)
        self._loop = loop
        self._ready = ready
        self._why_not = why_not  # a reason for a 503 of /readyz, e.g. the broker's block
        self._server = make_server(
            host, port, self._app, server_class=_Server, handler_class=_Quiet
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="bus-http", daemon=True
        )

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("serving /metrics, /healthz, /readyz on port %d", self.port)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _loop_alive(self) -> bool:
        async def ping() -> bool:
            return True

        try:
            return asyncio.run_coroutine_threadsafe(ping(), self._loop).result(2.0)
        except Exception:
            return False

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            return _answer(start_response, self._loop_alive(), b"alive\n", b"event loop stuck\n")
        if path == "/readyz":
            why = self._why_not() if self._why_not is not None else ""
            no = f"not ready: {why}\n".encode() if why else b"not ready\n"
            return _answer(start_response, self._ready(), b"ready\n", no)
        if path in ("/metrics", "/"):
            result: Iterable[bytes] = self._metrics(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz, /readyz\n"]


def _answer(start_response: StartResponse, ok: bool, yes: bytes, no: bytes) -> list[bytes]:
    status = "200 OK" if ok else "503 Service Unavailable"
    start_response(status, [("Content-Type", "text/plain")])
    return [yes if ok else no]
