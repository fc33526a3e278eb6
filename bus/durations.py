"""Durations as the topology writes them: ``250ms``, ``30s``, ``5m``, ``1h``, ``1d``."""

from __future__ import annotations

import re

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PATTERN = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")


def parse_ms(text: str) -> int:
    """Return the duration in milliseconds, or raise ValueError saying it is not a duration."""
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) <= 0:
        shown = f'"{text}"' if isinstance(text, str) else repr(text)
        raise ValueError(f"{shown} is not a duration (use e.g. 250ms, 30s, 5m, 1h, 1d)")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def label(ms: int) -> str:
    """The normalised name of a duration: the largest unit that divides it (60000 -> "1m")."""
    for unit in ("d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def normalise(text: str) -> str:
    """``"60s"`` -> ``"1m"``; raises ValueError when *text* is not a duration."""
    return label(parse_ms(text))


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|m|h)\s*$")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: str) -> float:
    """``"10/s"`` -> 10.0 starts per second (also ``600/m``, ``100/h``); raises ValueError."""
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) <= 0:
        shown = f'"{text}"' if isinstance(text, str) else repr(text)
        raise ValueError(f"{shown} is not a rate (use e.g. 10/s, 600/m, 100/h)")
    return int(match.group(1)) / _RATE_UNITS[match.group(2)]


def normalise_rate(text: str) -> str:
    """``"10 / s"`` -> ``"10/s"``; raises ValueError when *text* is not a rate."""
    parse_rate(text)
    return text.replace(" ", "")


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}  # fmt: skip


def parse_bytes(text: str | int) -> int:
    """``"10GB"`` -> 10_000_000_000 (also ``500MB``, ``1GiB``, a plain number of bytes);
    raises ValueError."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    match = _SIZE.match(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) <= 0:
        shown = f'"{text}"' if isinstance(text, str) else repr(text)
        raise ValueError(f"{shown} is not a size (use e.g. 500MB, 10GB, 1GiB)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def normalise_bytes(text: str | int) -> str:
    """``"10 GB"`` -> ``"10GB"``; raises ValueError when *text* is not a size."""
    parse_bytes(text)
    return str(text).replace(" ", "")
