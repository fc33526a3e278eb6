"""The one place that opens AMQP connections. aio-pika's robust connection owns reconnects:
it restores channels (and their qos) after the broker comes back; the subscriber's consumer
consumes again by itself (bus.consumer)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractRobustConnection

from bus.errors import BrokerUnavailable, BusError, ConfigError
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
    try:
        return await aio_pika.connect_robust(
            url,
            client_properties=_properties(name),
            timeout=timeout,
            # aio-pika waits 5 s between attempts by default: too long for a dropped connection
            reconnect_interval=float(os.environ.get("BUS_RECONNECT_INTERVAL", RECONNECT_INTERVAL)),
        )
    except (TimeoutError, OSError, ValueError, aiormq.exceptions.AMQPError) as exc:
        raise _failure(url, exc) from None


async def connect_plain(
    url: str, name: str = "bus", *, timeout: float = CONNECT_TIMEOUT
) -> AbstractConnection:
    """A plain connection, for short administrative work where a failed declaration must stay
    failed (topology probes, DLQ tools) instead of being retried behind our back."""
    try:
        return await aio_pika.connect(url, client_properties=_properties(name), timeout=timeout)
    except (TimeoutError, OSError, ValueError, aiormq.exceptions.AMQPError) as exc:
        raise _failure(url, exc) from None


def _failure(url: str, exc: BaseException) -> BusError:
    """The one-line error for a failed connect: a malformed URL is configuration (exit 2)."""
    if isinstance(exc, ValueError) and not isinstance(exc, aiormq.exceptions.AMQPError):
        if "float" in str(exc):  # BUS_RECONNECT_INTERVAL, read as the connection opens
            return ConfigError(f"BUS_RECONNECT_INTERVAL: give a number of seconds ({exc})")
        return ConfigError(f"BUS_URL {redact(url)} is not a valid AMQP URL: {exc}")
    return BrokerUnavailable(_why(url, exc))


def _why(url: str, exc: BaseException) -> str:
    """What went wrong and what to do: each cause its own advice (never a password)."""
    where = f"RabbitMQ at {redact(url)}"
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
    if isinstance(exc, socket.gaierror) or (exc.args and exc.args[0] in (-2, -3, -5)):
        return f"cannot reach {where}: unknown host. Check the host name in BUS_URL."
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in reason:
        reason = "connection refused"
    elif isinstance(exc, asyncio.TimeoutError):
        reason = "timed out"
    elif "unexpectedly closed" in reason:
        return (
            f"cannot talk AMQP to {where}: the server closed the connection "
            "(is that port RabbitMQ's AMQP port, 5672, or 5671 for amqps?)"
        )
    return (
        f"cannot reach {where}: {reason}. "
        "Start one (e.g. `rabbitmq-server -detached`) or set BUS_URL."
    )
