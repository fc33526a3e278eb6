"""The one place that opens AMQP connections. aio-pika's robust connection owns reconnects:
it restores channels (and their qos) after the broker comes back; the subscriber's consumer
consumes again by itself (bus.consume.consumer).

`BUS_URL` may list the nodes of one cluster (``amqp://u:p@rabbit-1,rabbit-2:5673,rabbit-3/vh``):
a connection goes to the first node that answers, and a robust one moves on to the next node in
turn for every reconnect attempt after a loss, so channels, consumers and the publisher's
unconfirmed messages are restored on another node exactly as after a reconnect to the same one.

`amqps://` verifies the broker's certificate (system CAs, or `?cafile=PATH`; a client
certificate with `certfile`/`keyfile`): aiormq reads those from the URL. A URL asking to turn
verification off (`no_verify_ssl`) is refused, and a failed verification is one clear
BrokerUnavailable, never a retry without it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractRobustConnection, UnderlayConnection
from yarl import URL

from bus.amqp import reader
from bus.amqp.flow import Flow
from bus.amqp.reader import BufferedUnderlay
from bus.errors import BrokerUnavailable, BusError, ConfigError
from bus.settings import DEFAULT_RECONNECT_INTERVAL, broker_urls, redact

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
RECONNECT_INTERVAL = DEFAULT_RECONNECT_INTERVAL


def _properties(name: str) -> dict[str, Any]:
    return {"connection_name": f"bus:{name}@{socket.gethostname()}"}


_FAILURES = (TimeoutError, OSError, aiormq.exceptions.AMQPError)


class ClusterConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection over the nodes of one cluster: the first attempt dials the
    node it was made for, every later attempt (a reconnect after a loss, or its retries) the
    next node in turn."""

    def __init__(
        self, url: URL, *, nodes: Sequence[URL] = (), buffered: bool = False, **kwargs: Any
    ) -> None:
        self._buffered = buffered  # the bus's frame reader (bus.amqp.reader), or aiormq's
        self._nodes = list(nodes) or [url]
        self._index = self._nodes.index(url) if url in self._nodes else 0
        self._counting = False
        self._attempts = 0
        name = kwargs.get("client_properties", {}).get("connection_name", "bus")
        self.flow = Flow(name)  # connection.blocked / unblocked, across reconnects (bus.amqp.flow)
        super().__init__(url, **kwargs)
        self._counting = True

    # aio-pika 10 begins every connect attempt, the first and each reconnect, by setting
    # `transport = None` and then dials `self.url` (RobustConnection.__connect_transport, a
    # private method): the one place to choose the node. tests/integration/test_cluster.py
    # fails if an upgrade changes that.
    @property
    def transport(self) -> UnderlayConnection | None:
        return self._transport

    @transport.setter
    def transport(self, value: UnderlayConnection | None) -> None:
        if value is None and self._counting:
            if self._attempts:
                self._index = (self._index + 1) % len(self._nodes)
            self._attempts += 1
        self._transport = value

    async def _RobustConnection__connect_transport(self) -> None:
        """aio-pika's connect attempt (RobustConnection.__connect_transport), opening the
        aiormq connection with the bus's frame reader when asked to."""
        if not self._buffered:
            await super()._RobustConnection__connect_transport()  # type: ignore[misc]
            return
        self.transport = None
        self.connected.clear()
        self.transport = await BufferedUnderlay.connect(
            self.url, self._on_connection_close,
            timeout=self._RobustConnection__connect_timeout,  # type: ignore[attr-defined]
            **self.kwargs,
        )  # fmt: skip
        await self._on_connected()
        fail_fast = self._RobustConnection__fail_fast_future  # type: ignore[attr-defined]
        if not fail_fast.done():
            fail_fast.set_result(None)

    @property
    def url(self) -> URL:
        return self._nodes[self._index]

    @url.setter
    def url(self, value: URL) -> None:  # aio-pika sets it in __init__ and update_secret
        self._nodes[self._index] = value

    async def _on_connected(self) -> None:
        if self.transport is not None:
            self.flow.attach(self.transport.connection, redact(str(self.url)))
        await super()._on_connected()
        # which node matters once there are several, or after a loss; a one-node first connect
        # is what BUS_URL says, and a CLI command's single stderr line stays single
        moved = len(self._nodes) > 1 or self._attempts > 1
        log.log(logging.INFO if moved else logging.DEBUG, "connected to RabbitMQ at %s",
                _node(self.url))  # fmt: skip


class FramedConnection(aio_pika.Connection):
    """aio-pika's plain connection (no reconnects) over the bus's frame reader."""

    async def connect(self, timeout: Any = None) -> None:
        self.transport = await BufferedUnderlay.connect(
            self.url, self._on_connection_close, timeout=timeout, **self.kwargs
        )
        await self._on_connected()


def _node(url: URL | str) -> str:
    parts = urlsplit(str(url))
    return f"{parts.hostname}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"


async def connect(
    url: str,
    name: str = "bus",
    *,
    timeout: float = CONNECT_TIMEOUT,
    reconnect_interval: float = RECONNECT_INTERVAL,
) -> AbstractRobustConnection:
    """A robust connection to the first node of *url* that answers (reconnects by itself once
    established, moving through the listed nodes, *reconnect_interval* seconds apart:
    `Settings.reconnect_interval`, BUS_RECONNECT_INTERVAL)."""
    urls = _urls(url)
    nodes = [URL(u) for u in urls]
    buffered = reader.wanted()
    failures: list[tuple[str, BaseException]] = []
    for node in nodes:
        conn = ClusterConnection(
            node, nodes=nodes, client_properties=_properties(name),
            reconnect_interval=reconnect_interval, buffered=buffered,
        )  # fmt: skip
        try:
            await conn.connect(timeout=timeout)
            return conn
        except _FAILURES as exc:
            failures.append((str(node), exc))
            await conn.close()
        except ValueError as exc:  # a malformed URL: configuration, not the broker
            await conn.close()
            raise _malformed(url, exc) from None
    raise BrokerUnavailable(_why_all(url, failures))


async def connect_plain(
    url: str, name: str = "bus", *, timeout: float = CONNECT_TIMEOUT, frames: bool = False
) -> AbstractConnection:
    """A plain connection to the first node of *url* that answers, for short administrative
    work where a failed declaration must stay failed (topology probes, DLQ tools) instead of
    being retried behind our back. *frames*: read it with the bus's frame reader (a bulk
    reader such as `bus history` and `bus replay`), as `BUS_FRAME_READER` allows."""
    failures: list[tuple[str, BaseException]] = []
    kind = FramedConnection if frames and reader.wanted() else aio_pika.Connection
    for single in _urls(url):
        try:
            conn = await aio_pika.connect(
                single, client_properties=_properties(name), timeout=timeout,
                connection_class=kind,
            )  # fmt: skip
        except _FAILURES as exc:
            failures.append((single, exc))
            continue
        except ValueError as exc:
            raise _malformed(url, exc) from None
        log.debug("connected to RabbitMQ at %s", _node(single))
        return conn
    raise BrokerUnavailable(_why_all(url, failures))


def _urls(url: str) -> list[str]:
    refuse_unverified(url)
    try:
        return broker_urls(url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _why_all(url: str, failures: list[tuple[str, BaseException]]) -> str:
    if len(failures) == 1:
        return _why(url, failures[0][1])
    each = "; ".join(f"{_node(u)}: {_reason(e)}" for u, e in failures)
    return f"cannot reach any RabbitMQ node of {redact(url)}: {each}. Check BUS_URL."


def refuse_unverified(url: str) -> None:
    """ConfigError when *url* asks aiormq to skip certificate verification."""
    query = dict(parse_qsl(urlsplit(url).query))
    if query.get("no_verify_ssl", "0") != "0":
        raise ConfigError(
            f"{redact(url)}: no_verify_ssl is refused: the bus always verifies the broker's "
            "certificate (give its CA with ?cafile=PATH)"
        )


def _malformed(url: str, exc: ValueError) -> BusError:
    return ConfigError(f"BUS_URL {redact(url)} is not a valid AMQP URL: {exc}")


def _why(url: str, exc: BaseException) -> str:
    """What went wrong and what to do: each cause its own advice (never a password)."""
    where = f"RabbitMQ at {redact(url)}"
    tls = _tls_reason(exc)
    if tls is None and isinstance(exc, FileNotFoundError):
        tls = f"cannot read a TLS file named in the URL (cafile, certfile, keyfile): {exc}"
    if tls is not None:
        return f"cannot connect to {where}: {tls}"
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return (
            f"{where} refused the login: authentication failed. "
            "Check the user and password in BUS_URL (the broker is running)."
        )
    if isinstance(exc, aiormq.exceptions.ProtocolSyntaxError) and "Connection.Close" in reason:
        vhost = unquote(urlsplit(url).path[1:]) or "/"
        return (
            f"{where}: vhost {vhost!r} not found, or the user may not access it. "
            f"Create it (`rabbitmqctl add_vhost {vhost}` and `set_permissions`) "
            "or fix the path of BUS_URL."
        )
    if _unknown_host(exc):
        return f"cannot reach {where}: unknown host. Check the host name in BUS_URL."
    if "unexpectedly closed" in reason:
        return (
            f"cannot talk AMQP to {where}: the server closed the connection "
            "(is that port RabbitMQ's AMQP port, 5672, or 5671 for amqps?)"
        )
    return (
        f"cannot reach {where}: {_reason(exc)}. "
        "Start one (e.g. `rabbitmq-server -detached`) or set BUS_URL."
    )


def _unknown_host(exc: BaseException) -> bool:
    return isinstance(exc, socket.gaierror) or bool(exc.args and exc.args[0] in (-2, -3, -5))


def _reason(exc: BaseException) -> str:
    """A short cause, for one node of several."""
    tls = _tls_reason(exc)
    if tls is not None:
        return tls
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        reason = "authentication failed (check the user and password in BUS_URL)"
    elif _unknown_host(exc):
        reason = "unknown host"
    elif isinstance(exc, ConnectionRefusedError) or "Connect call failed" in reason:
        reason = "connection refused"
    elif isinstance(exc, asyncio.TimeoutError):
        reason = "timed out"
    return reason


def _tls_reason(exc: BaseException) -> str | None:
    """One line for a TLS failure anywhere in *exc*'s chain (aiormq wraps it), else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return (
                f"TLS: the broker's certificate failed verification ({seen.verify_message}); "
                "give the CA that signed it with ?cafile=PATH"
            )
        if isinstance(seen, ssl.SSLError):
            return f"TLS handshake failed: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__
    return None
