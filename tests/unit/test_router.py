"""bus.consume.router: which handler an event type reaches, and how its data is parsed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from bus.consume.router import Router


class OrderPlaced(BaseModel):
    order_id: str
    total: float = 0.0


def router_with(*patterns: str) -> Router:
    router = Router()
    for i, pattern in enumerate(patterns):

        async def handler(event: dict[str, Any], ctx: Any) -> None:
            return None

        router.on(pattern, name=f"h{i}:{pattern}")(handler)
    return router


def chosen(router: Router, event_type: str) -> str | None:
    found = router.match(event_type)
    return None if found is None else found.name


def test_exact_type_beats_a_pattern_registered_earlier() -> None:
    router = router_with("order.*", "#", "order.placed")
    assert chosen(router, "order.placed") == "h2:order.placed"


def test_first_matching_pattern_wins() -> None:
    router = router_with("order.*", "order.#", "#")
    assert chosen(router, "order.shipped") == "h0:order.*"
    assert chosen(router, "order.shipped.eu") == "h1:order.#"
    assert chosen(router, "invoice.sent") == "h2:#"


def test_hash_is_a_catch_all() -> None:
    router = router_with("#")
    for event_type in ("a", "a.b", "order.placed.eu"):
        assert chosen(router, event_type) == "h0:#"


def test_no_match_is_none() -> None:
    assert router_with("order.*").match("invoice.sent") is None
    assert Router().match("order.placed") is None


def test_registering_after_a_lookup_is_seen_by_the_next_lookup() -> None:
    router = router_with("#")
    assert chosen(router, "order.placed") == "h0:#"
    router.include(router_with("order.placed"))
    assert chosen(router, "order.placed") == "h0:order.placed"


def test_default_handler_name_is_module_and_qualname() -> None:
    router = Router()

    @router.on("order.placed")
    async def confirm(event: dict[str, Any], ctx: Any) -> None: ...

    (handler,) = router.handlers
    assert (
        handler.name
        == f"{__name__}.test_default_handler_name_is_module_and_qualname.<locals>.confirm"
    )
    assert handler.func is confirm


def test_pydantic_annotation_parses_the_event() -> None:
    router = Router()

    @router.on("order.placed")
    async def confirm(event: OrderPlaced, ctx: Any) -> None: ...

    handler = router.handlers[0]
    assert handler.parse_data({"order_id": "o-1", "total": "9.5"}) == OrderPlaced(
        order_id="o-1", total=9.5
    )
    assert handler.parse_json(b'{"order_id": "o-2"}') == OrderPlaced(order_id="o-2")
    with pytest.raises(ValidationError):
        handler.parse_data({"total": 1})


def test_other_types_are_validated_by_pydantic_too() -> None:
    router = Router()

    @router.on("counter.bumped")
    async def bump(event: list[int], ctx: Any) -> None: ...

    assert router.handlers[0].parse_data(["1", 2]) == [1, 2]


@pytest.mark.parametrize(
    "annotation",
    ["dict[str, Any]", "dict", "Any", "", "Mapping[str, Any]"],
)
def test_raw_annotations_pass_the_data_through(annotation: str) -> None:
    namespace: dict[str, Any] = {"Any": Any, "Mapping": Mapping}
    hint = f": {annotation}" if annotation else ""
    exec(f"async def handler(event{hint}, ctx):\n    return None\n", namespace)
    router = Router()
    router.on("#")(namespace["handler"])
    data = {"anything": ["goes", 1]}
    handler = router.handlers[0]
    assert handler.adapter is None
    assert handler.parse_data(data) is data


def test_async_executor_for_a_plain_def_is_refused() -> None:
    router = Router()

    def sync_handler(event: dict[str, Any], ctx: Any) -> None: ...

    with pytest.raises(TypeError, match="must be `async def`"):
        router.on("order.placed", executor="loop")(sync_handler)
    assert router.handlers == []


def test_handler_must_take_event_and_ctx() -> None:
    router = Router()

    async def one_arg(event: dict[str, Any]) -> None: ...

    with pytest.raises(TypeError, match=r"must take \(event, ctx\)"):
        router.on("order.placed")(one_arg)  # type: ignore[arg-type]
