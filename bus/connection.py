"""The one place that opens AMQP connections. aio-pika's robust connection owns reconnects:
it restores channels (and their qos) after the broker comes back; the subscriber's consumer
consumes again by itself (bus.consumer)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractRobustConnection

from bus.errors import BrokerUnavailable
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
    except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
        raise BrokerUnavailable(_why(url, exc)) from None


async def connect_plain(
    url: str, name: str = "bus", *, timeout: float = CONNECT_TIMEOUT
) -> AbstractConnection:
    """A plain connection, for short administrative work where a failed declaration must stay
    failed (topology probes, DLQ tools) instead of being retried behind our back."""
    try:
        return await aio_pika.connect(url, client_properties=_properties(name), timeout=timeout)
    except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
        raise BrokerUnavailable(_why(url, exc)) from None


def _why(url: str, exc: BaseException) -> str:
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
