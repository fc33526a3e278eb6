"""bus.topology.routing: RabbitMQ topic semantics (`*` exactly one word, `#` zero or more words)."""

from __future__ import annotations

import pytest

from bus.topology.routing import is_pattern, matches

# Every row was checked against RabbitMQ 3.10.8 (a throwaway topic exchange, one queue per row).
CASES = [
    # pattern, routing key, routed?
    ("order.placed", "order.placed", True),
    ("order.placed", "order.shipped", False),
    ("order.placed", "order.placed.eu", False),
    # `*` is exactly one word
    ("order.*", "order.placed", True),
    ("order.*", "order", False),
    ("order.*", "order.placed.eu", False),
    ("*", "order", True),
    ("*", "order.placed", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.b.c", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    # `#` is zero or more words
    ("order.#", "order", True),
    ("order.#", "order.placed", True),
    ("order.#", "order.placed.eu", True),
    ("order.#", "orders.placed", False),
    ("#", "order", True),
    ("#", "order.placed.eu.x", True),
    ("#.c", "c", True),
    ("#.c", "a.b.c", True),
    ("#.c", "a.b.c.d", False),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.c", True),
    ("a.#.c", "a.b.x.c", True),
    ("a.#.c", "a.b", False),
    ("#.#", "a", True),
    ("#.*", "a", True),
    ("*.#", "a", True),
    # empty words are words
    ("a..c", "a..c", True),
    ("a.*.c", "a..c", True),
    ("a..c", "a.c", False),
    ("order.#", "order.", True),
    ("order.*", "order.", True),
    # the empty routing key has zero words, not one empty word
    ("#", "", True),
    ("", "", True),
    ("", "a", False),
    ("a", "", False),
    ("*", "", False),
    ("#.*", "", False),
    ("*.#", "", False),
]


@pytest.mark.parametrize(("pattern", "key", "routed"), CASES)
def test_matches_follows_rabbitmq_topic_semantics(pattern: str, key: str, routed: bool) -> None:
    assert matches(pattern, key) is routed, (
        f"binding {pattern!r} {'should' if routed else 'should not'} route key {key!r}"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("order.*", True), ("#", True), ("a.#.c", True), ("order.placed", False),
     ("order.place*", False), ("order#", False)],
)  # fmt: skip
def test_is_pattern_needs_a_whole_wildcard_word(text: str, expected: bool) -> None:
    assert is_pattern(text) is expected
