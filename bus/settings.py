"""Configuration as data: read from the environment, overridable by CLI options."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, field_validator

from bus.durations import normalise, parse_ms
from bus.errors import ConfigError

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"
DEFAULT_TOPOLOGY = "topology/topology.yaml"
DEFAULT_STORE_URL = "sqlite:///.bus/processed.db"
DEFAULT_OUTBOX_URL = "sqlite:///.bus/outbox.db"
# RabbitMQ's default consumer_timeout; a broker that declares another says so here
DEFAULT_CONSUMER_TIMEOUT = "30m"


class Settings(BaseModel):
    """Where the broker, the topology file and the idempotency store are."""

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)  # URLs hold passwords

    url: str = DEFAULT_URL
    topology: str = DEFAULT_TOPOLOGY
    store_url: str = DEFAULT_STORE_URL
    outbox_url: str = DEFAULT_OUTBOX_URL
    consumer_timeout: str = DEFAULT_CONSUMER_TIMEOUT  # BUS_CONSUMER_TIMEOUT, the broker's

    @field_validator("consumer_timeout")
    @classmethod
    def _duration(cls, value: str) -> str:
        try:
            return normalise(value)
        except ValueError as exc:
            raise ValueError(f"BUS_CONSUMER_TIMEOUT: {exc}") from None

    @property
    def consumer_timeout_seconds(self) -> float:
        return parse_ms(self.consumer_timeout) / 1000

    @field_validator("url")
    @classmethod
    def _amqp(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("amqp", "amqps"):
            raise ValueError(f"BUS_URL must be amqp:// or amqps://, got {redact(value)}")
        return value

    @classmethod
    def from_env(cls, **overrides: str | None) -> Settings:
        """`BUS_URL`, `BUS_TOPOLOGY`, `BUS_STORE_URL`, `BUS_OUTBOX_URL`,
        `BUS_CONSUMER_TIMEOUT`; non-None *overrides* win."""
        values = {
            "url": os.environ.get("BUS_URL", DEFAULT_URL),
            "topology": os.environ.get("BUS_TOPOLOGY", DEFAULT_TOPOLOGY),
            "store_url": os.environ.get("BUS_STORE_URL", DEFAULT_STORE_URL),
            "outbox_url": os.environ.get("BUS_OUTBOX_URL", DEFAULT_OUTBOX_URL),
            "consumer_timeout": os.environ.get("BUS_CONSUMER_TIMEOUT", DEFAULT_CONSUMER_TIMEOUT),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def redact(url: str) -> str:
    """*url* with its password replaced by ``***``: safe for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]  # keeps [::1] brackets and the port
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def sqlite_path(url: str, variable: str) -> str:
    """The file of ``sqlite:///relative/path`` or ``sqlite:////absolute/path``."""
    path = url.split("://", 1)[-1]
    path = path[1:] if path.startswith("/") else path
    if not path:
        raise ConfigError(f"{variable}: sqlite needs a path, e.g. sqlite:///.bus/name.db")
    return path
