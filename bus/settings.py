"""Configuration as data: read from the environment, overridable by CLI options."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, field_validator

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"
DEFAULT_TOPOLOGY = "topology/topology.yaml"
DEFAULT_STORE_URL = "sqlite:///.bus/processed.db"


class Settings(BaseModel):
    """Where the broker, the topology file and the idempotency store are."""

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)  # URLs hold passwords

    url: str = DEFAULT_URL
    topology: str = DEFAULT_TOPOLOGY
    store_url: str = DEFAULT_STORE_URL

    @field_validator("url")
    @classmethod
    def _amqp(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("amqp", "amqps"):
            raise ValueError(f"BUS_URL must be amqp:// or amqps://, got {redact(value)}")
        broker_urls(value)  # every listed host is usable
        return value

    @classmethod
    def from_env(cls, **overrides: str | None) -> Settings:
        """`BUS_URL`, `BUS_TOPOLOGY`, `BUS_STORE_URL`; non-None *overrides* win."""
        values = {
            "url": os.environ.get("BUS_URL", DEFAULT_URL),
            "topology": os.environ.get("BUS_TOPOLOGY", DEFAULT_TOPOLOGY),
            "store_url": os.environ.get("BUS_STORE_URL", DEFAULT_STORE_URL),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


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
