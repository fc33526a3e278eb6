"""RabbitMQ topic matching: words split on ``.``, ``*`` is exactly one word, ``#`` zero or more."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4096)
def matches(pattern: str, key: str) -> bool:
    """True when a binding *pattern* routes a message with routing *key*, as RabbitMQ decides."""
    # RabbitMQ reads an empty key (or pattern) as zero words, not one empty word
    return _match(_words(pattern), _words(key))


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split(".")) if text else ()


def _match(pat: tuple[str, ...], words: tuple[str, ...]) -> bool:
    # reachable[j]: the pattern prefix consumed so far matches words[:j]
    reachable = [True] + [False] * len(words)
    for p in pat:
        if p == "#":
            # zero or more words: once a prefix is reachable, every longer prefix is
            for j in range(1, len(words) + 1):
                reachable[j] = reachable[j] or reachable[j - 1]
        else:
            nxt = [False] * (len(words) + 1)
            for j in range(1, len(words) + 1):
                nxt[j] = reachable[j - 1] and (p == "*" or p == words[j - 1])
            reachable = nxt
    return reachable[len(words)]


def is_pattern(text: str) -> bool:
    """True when *text* holds a wildcard word."""
    return any(w in ("*", "#") for w in text.split("."))
