"""The API's configuration, read from the environment (`ApiSettings.from_env()`)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, field_validator

from bus.errors import ConfigError
from bus.settings import DEFAULT_GRACE_PERIOD, DEFAULT_OUTBOX_URL, Settings, redact

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
SUBSCRIBER = "orders"  # the embedded subscriber's name in the topology
SOURCE = "orders-api"  # the events' `source` (AMQP app_id)


class ApiSettings(BaseModel):
    """Where the API's database is, where it listens, and the bus settings of its subscriber."""

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)  # URLs hold passwords

    database_url: str = DEFAULT_OUTBOX_URL
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    bus: Settings = Settings()
    grace: float = DEFAULT_GRACE_PERIOD  # seconds the embedded subscriber may drain on shutdown
    subscribe: bool = True  # run the embedded `orders` subscriber
    gc_freeze: bool = False  # move start-up objects out of the collector's sight (as `bus run`)

    @field_validator("database_url")
    @classmethod
    def _supported(cls, value: str) -> str:
        sqlalchemy_url(value)  # raises on anything but sqlite:/// and postgresql://
        return value

    @classmethod
    def from_env(cls, **overrides: object) -> ApiSettings:
        """`BUS_OUTBOX_URL`, `API_HOST`, `API_PORT`, `BUS_GRACE_PERIOD`, `API_SUBSCRIBE`,
        `API_GC_FREEZE`, and the bus's own `BUS_URL`, `BUS_TOPOLOGY`, `BUS_STORE_URL`."""
        env = os.environ
        bus = Settings.from_env()  # the one reader of BUS_* variables
        values: dict[str, object] = {
            "database_url": bus.outbox_url,
            "host": env.get("API_HOST", DEFAULT_HOST),
            "port": env.get("API_PORT", DEFAULT_PORT),
            "bus": bus,
            "grace": bus.grace_period,
            "subscribe": _flag(env.get("API_SUBSCRIBE", "1")),
            "gc_freeze": _flag(env.get("API_GC_FREEZE", "0")),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


def _flag(text: str) -> bool:
    return text.strip().lower() not in ("0", "false", "no", "off", "")


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy async URL of *url*: `postgresql://` → asyncpg, `sqlite:///` → aiosqlite."""
    scheme, sep, rest = url.partition("://")
    base = scheme.split("+")[0]
    if sep and base in ("postgresql", "postgres"):
        return f"postgresql+asyncpg://{rest}"
    if sep and base == "sqlite":
        if not sqlite_path(url):
            raise ConfigError("BUS_OUTBOX_URL: sqlite needs a path, e.g. sqlite:///.bus/outbox.db")
        return f"sqlite+aiosqlite://{rest}"
    raise ConfigError(f"BUS_OUTBOX_URL must be sqlite:///path or postgresql://…, got {redact(url)}")


def sqlite_path(url: str) -> str:
    """The file of a `sqlite:///relative` or `sqlite:////absolute` URL ('' when it has none)."""
    path = urlsplit(url).path
    return path[1:] if path.startswith("/") else path


def ensure_parent(url: str) -> None:
    """Create the folder of a SQLite database file (`.bus/` by default)."""
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
