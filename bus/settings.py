"""Configuration as data: read from the environment, overridable by CLI options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from bus.durations import normalise, parse_ms
from bus.errors import ConfigError

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"
DEFAULT_TOPOLOGY = "topology/topology.yaml"
DEFAULT_STORE_URL = "sqlite:///.bus/processed.db"  # relative to the topology file's folder
DEFAULT_OUTBOX_URL = "sqlite:///.bus/outbox.db"
# RabbitMQ's default consumer_timeout; a broker that declares another says so here
DEFAULT_CONSUMER_TIMEOUT = "30m"
DEFAULT_RECONNECT_INTERVAL = 1.0  # aio-pika's 5 s is too long for a dropped connection
DEFAULT_GRACE_PERIOD = 25.0  # below Kubernetes' default terminationGracePeriodSeconds (30)
DEFAULT_CLAIM_LEASE = 30.0
DEFAULT_STORE_RETENTION = 7 * 86400.0
DEFAULT_SAGA_RETENTION = 7 * 86400.0  # completed saga instances are kept this long
DEFAULT_GAUGE_INTERVAL = 5.0
DEFAULT_SCHEDULER_LOCK = "bus.scheduler.lock"

# Every BUS_* variable, and the Settings field it fills; `Settings.from_env` is the one reader.
SECONDS = {
    "BUS_RECONNECT_INTERVAL": ("reconnect_interval", DEFAULT_RECONNECT_INTERVAL),
    "BUS_GRACE_PERIOD": ("grace_period", DEFAULT_GRACE_PERIOD),
    "BUS_CLAIM_LEASE_SECONDS": ("claim_lease", DEFAULT_CLAIM_LEASE),
    "BUS_STORE_RETENTION_SECONDS": ("store_retention", DEFAULT_STORE_RETENTION),
    "BUS_SAGA_RETENTION_SECONDS": ("saga_retention", DEFAULT_SAGA_RETENTION),
    "BUS_GAUGE_INTERVAL": ("gauge_interval", DEFAULT_GAUGE_INTERVAL),
}
TEXT = {
    "BUS_URL": ("url", DEFAULT_URL),
    "BUS_TOPOLOGY": ("topology", DEFAULT_TOPOLOGY),
    "BUS_STORE_URL": ("store_url", ""),
    "BUS_OUTBOX_URL": ("outbox_url", DEFAULT_OUTBOX_URL),
    "BUS_CONSUMER_TIMEOUT": ("consumer_timeout", DEFAULT_CONSUMER_TIMEOUT),
    "BUS_LOG_FORMAT": ("log_format", "text"),
    "BUS_LOG_LEVEL": ("log_level", "INFO"),
    "BUS_METRICS_PORT": ("metrics_port", ""),
    "BUS_UI_TOKEN": ("ui_token", ""),
    "BUS_SCHEDULER_LOCK": ("scheduler_lock", DEFAULT_SCHEDULER_LOCK),
}


class Settings(BaseModel):
    """Where the broker, the topology file and the stores are, and the process's knobs: every
    `BUS_*` variable (the docs' configuration reference), read once by `from_env`."""

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)  # URLs hold passwords

    url: str = DEFAULT_URL
    topology: str = DEFAULT_TOPOLOGY
    store_url: str = ""  # empty: the default store beside the topology file (store_beside)
    outbox_url: str = DEFAULT_OUTBOX_URL
    consumer_timeout: str = DEFAULT_CONSUMER_TIMEOUT  # BUS_CONSUMER_TIMEOUT, the broker's
    reconnect_interval: float = DEFAULT_RECONNECT_INTERVAL
    grace_period: float = DEFAULT_GRACE_PERIOD
    claim_lease: float = DEFAULT_CLAIM_LEASE
    store_retention: float = DEFAULT_STORE_RETENTION
    saga_retention: float = DEFAULT_SAGA_RETENTION
    gauge_interval: float = DEFAULT_GAUGE_INTERVAL
    log_format: str = "text"
    log_level: str = "INFO"
    metrics_port: int | None = None
    ui_token: str | None = None  # None: `bus ui` is read-only
    scheduler_lock: str = DEFAULT_SCHEDULER_LOCK

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _port(cls, value: Any) -> Any:
        if value in ("", None):
            return None
        try:
            port = int(value)
        except (TypeError, ValueError):
            port = -1
        if not 0 <= port <= 65535:
            raise ValueError(f"BUS_METRICS_PORT={value!r}: give a port number, e.g. 9100")
        return port

    @field_validator("ui_token", mode="before")
    @classmethod
    def _token(cls, value: Any) -> Any:
        return value or None  # empty means unset

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

    @model_validator(mode="before")
    @classmethod
    def _default_store(cls, values: Any) -> Any:
        if isinstance(values, dict) and not values.get("store_url"):
            values = {**values, "store_url": store_beside(values.get("topology", DEFAULT_TOPOLOGY))}
        return values

    @field_validator("url")
    @classmethod
    def _amqp(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("amqp", "amqps"):
            raise ValueError(f"BUS_URL must be amqp:// or amqps://, got {redact(value)}")
        broker_urls(value)  # every listed host is usable
        return value

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Every `BUS_*` variable (see TEXT and SECONDS); non-None *overrides* (field names)
        win. ConfigError (exit 2) names a variable that does not parse."""
        values: dict[str, Any] = {
            field: os.environ.get(name, default) for name, (field, default) in TEXT.items()
        }
        for name, (field, default) in SECONDS.items():
            values[field] = seconds_from_env(name, default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:  # a BusError for the Python API too, in one line
            raise ConfigError(
                "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            ) from None


def seconds_from_env(name: str, default: float) -> float:
    """The number of seconds in the environment variable *name*; ConfigError (exit 2) when it
    is not a non-negative number."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"{name}={raw!r}: give a number of seconds, e.g. {default:g}")
    return value


def store_beside(topology: str) -> str:
    """The default idempotency store: `.bus/processed.db` in the topology file's folder, as an
    absolute path. Every process of a service reads the same topology file, so they share one
    store whatever their working directory (a relative default silently gave each folder its own,
    empty store)."""
    folder = Path(topology).expanduser().resolve().parent
    return f"sqlite:///{folder / '.bus' / 'processed.db'}"


def broker_urls(url: str) -> list[str]:
    """One URL per broker that *url* lists: ``amqp://u:p@h1,h2:5673,h3/vhost?cafile=…`` gives
    three single-host URLs sharing the scheme, credentials, vhost and query (TLS options).
    ValueError names an empty host or a bad port (the password redacted)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    out = []
    for host in hosts.split(","):
        single = urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host.strip()}"))
        try:
            ok = bool(urlsplit(single).hostname) and urlsplit(single).port != 0
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"BUS_URL lists an unusable host {host.strip()!r}: {redact(url)}")
        out.append(single)
    return out


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
