"""A subscriber for the `bus ui` tests: its model needs an email, its handler can be broken.

The UI imports `router` (from the topology's `handlers:`) to check edited bodies against the
model; each test runs its own `Mailer().router`, whose state it controls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from bus import Context, Router

HANDLERS = "tests.ui_handlers:router"


class Order(BaseModel):
    order_id: str
    email: str


@dataclass
class Handled:
    id: str
    email: str
    attempt: int
    headers: dict[str, Any]


@dataclass
class Mailer:
    """The handler of one test: raises TimeoutError while `broken`, else records the call."""

    broken: bool = True
    handled: list[Handled] = field(default_factory=list)
    router: Router = field(default_factory=Router)

    def __post_init__(self) -> None:
        @self.router.on("order.placed", name="mailer.confirm")
        async def confirm(order: Order, ctx: Context) -> None:
            if self.broken:
                raise TimeoutError(f"smtp timed out for {order.order_id}")
            self.handled.append(Handled(ctx.id, order.email, ctx.attempt, dict(ctx.headers)))


router = Mailer().router
