"""What `bus ui` needs to know, as data: where the broker, topology and outbox are, the token.

Without a token the pages are read-only and only loopback may be bound: anyone who can reach
the port can read every parked message, so reaching it must already mean being on the machine.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from bus.errors import ConfigError
from bus.scheduling.leader import DEFAULT_LOCK_QUEUE
from bus.settings import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
BROWSE_LIMIT = 10_000  # messages one grouped browse reads; more are counted, not grouped
BROWSE_TTL = 5.0  # seconds a grouped browse is reused while the DLQ's depth stays the same


@dataclass(frozen=True)
class UiConfig:
    """Settings of one `bus ui` process. `token` None: read-only."""

    settings: Settings
    token: str | None = None
    lock_queue: str = DEFAULT_LOCK_QUEUE
    browse_limit: int = BROWSE_LIMIT
    browse_ttl: float = BROWSE_TTL

    @classmethod
    def from_env(cls, settings: Settings) -> UiConfig:
        """`BUS_UI_TOKEN` (empty means unset) and `BUS_SCHEDULER_LOCK`, from *settings*."""
        return cls(
            settings=settings,
            token=settings.ui_token,
            lock_queue=settings.scheduler_lock,
        )

    @property
    def read_only(self) -> bool:
        return self.token is None


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, config: UiConfig) -> None:
    """Refuse to serve anything but loopback without a token (ConfigError, exit 2)."""
    if config.read_only and not is_loopback(host):
        raise ConfigError(
            f"refusing to bind {host} without BUS_UI_TOKEN: without a token the page is for "
            "this machine only (bind 127.0.0.1, or set BUS_UI_TOKEN to serve others)"
        )
