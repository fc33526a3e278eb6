"""Logging setup: human-readable by default, one JSON object per line with `json`."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

FIELDS = ("event_id", "event_type", "subscriber", "attempt", "correlation_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({f: getattr(record, f) for f in FIELDS if hasattr(record, f)})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{f}={getattr(record, f)}" for f in FIELDS if hasattr(record, f))
        return f"{line} [{extra}]" if extra else line


def configure(fmt: str = "text", level: str = "INFO") -> None:
    """Send bus logs to stderr in *fmt* (`text` or `json`) at *level*."""
    from bus.errors import ConfigError

    if fmt not in ("text", "json"):
        raise ConfigError(f"BUS_LOG_FORMAT / --log-format {fmt!r}: use text or json")
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(
            f"BUS_LOG_LEVEL / --log-level {level!r}: use DEBUG, INFO, WARNING or ERROR"
        )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiormq logs every failed connect at ERROR; the bus reports those itself, once
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(
            max(logging.CRITICAL if root.level > logging.DEBUG else logging.DEBUG, root.level)
        )
