"""The one place that opens AMQP connections. aio-pika's robust connection owns reconnects:
it restores channels (and their qos) after the broker comes back; the subscriber's consumer
consumes again by itself (bus.consumer).

`amqps://` verifies the broker's certificate (system CAs, or `?cafile=PATH`; a client
certificate with `certfile`/`keyfile`): aiormq reads those from the URL. A URL asking to turn
verification off (`no_verify_ssl`) is refused, and a failed verification is one clear
BrokerUnavailable, never a retry without it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractRobustConnection

from bus.errors import BrokerUnavailable, ConfigError
from bus.settings import redact

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
RECONNECT_INTERVAL = 1.0


def _properties(name: str) -> dict[str, Any]:
    return {"connection_name": f"bus:{name}@{socket.gethostname()}"}


async def connect(
    url: str, name: str = "bus", *, timeout: float = CONNECT_TIMEOUT
) -> AbstractRobustConnection:
    """A robust connection (reconnects by itself once established)."""
    refuse_unverified(url)
    try:
        return await aio_pika.connect_robust(
            url,
            client_properties=_properties(name),
            timeout=timeout,
            # aio-pika waits 5 s between attempts by default: too long for a dropped connection
            reconnect_interval=float(os.environ.get("BUS_RECONNECT_INTERVAL", RECONNECT_INTERVAL)),
        )
    except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
        raise BrokerUnavailable(_why(url, exc)) from None


async def connect_plain(
    url: str, name: str = "bus", *, timeout: float = CONNECT_TIMEOUT
) -> AbstractConnection:
    """A plain connection, for short administrative work where a failed declaration must stay
    failed (topology probes, DLQ tools) instead of being retried behind our back."""
    refuse_unverified(url)
    try:
        return await aio_pika.connect(url, client_properties=_properties(name), timeout=timeout)
    except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
        raise BrokerUnavailable(_why(url, exc)) from None


def refuse_unverified(url: str) -> None:
    """ConfigError when *url* asks aiormq to skip certificate verification."""
    query = dict(parse_qsl(urlsplit(url).query))
    if query.get("no_verify_ssl", "0") != "0":
        raise ConfigError(
            f"{redact(url)}: no_verify_ssl is refused: the bus always verifies the broker's "
            "certificate (give its CA with ?cafile=PATH)"
        )


def _why(url: str, exc: BaseException) -> str:
    tls = _tls_reason(exc)
    if tls is None and isinstance(exc, FileNotFoundError):
        tls = f"cannot read a TLS file named in the URL (cafile, certfile, keyfile): {exc}"
    if tls is not None:
        return f"cannot connect to RabbitMQ at {redact(url)}: {tls}"
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        reason = "authentication failed (check the user and password in BUS_URL)"
    elif isinstance(exc, ConnectionRefusedError) or "Connect call failed" in reason:
        reason = "connection refused"
    elif isinstance(exc, asyncio.TimeoutError):
        reason = "timed out"
    return (
        f"cannot reach RabbitMQ at {redact(url)}: {reason}. "
        "Start one (e.g. `rabbitmq-server -detached`) or set BUS_URL."
    )


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
