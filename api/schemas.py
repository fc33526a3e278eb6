"""Request and response bodies of the orders API (pydantic), and the request fingerprint."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from api.catalogue import CATALOGUE, UnknownSku

Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
]
IDEMPOTENCY_KEY_MAX = 255


class ItemIn(BaseModel):
    """One line of an order: a catalogue SKU and how many."""

    model_config = ConfigDict(extra="forbid")

    sku: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
    quantity: int = Field(ge=1, le=1000)

    @field_validator("sku")
    @classmethod
    def _sold(cls, sku: str) -> str:
        if sku not in CATALOGUE:
            raise ValueError(str(UnknownSku([sku])))
        return sku


class OrderIn(BaseModel):
    """The body of `POST /orders`. Prices come from the catalogue, never from the client."""

    model_config = ConfigDict(extra="forbid")

    email: Email
    customer: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    items: list[ItemIn] = Field(min_length=1, max_length=100)

    def fingerprint(self) -> str:
        """A digest of the request as validated: a retried request must carry the same one."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class OrderCreated(BaseModel):
    """The answer to `POST /orders` (201), the same for every retry with one Idempotency-Key."""

    order_id: str


class State(StrEnum):
    """How far an order got, in order."""

    PLACED = "placed"  # its rows and its outbox row committed
    PUBLISHED = "published"  # the relay published order.placed (its outbox row is gone)
    SHIPMENT_REQUESTED = "shipment_requested"  # fulfillment's shipment.requested came back


class Step(BaseModel):
    """One reached state. `at` is unknown (None) for `published`: the relay keeps no record."""

    state: State
    at: datetime | None
    event_id: str | None = None
    detail: str | None = None


class ItemOut(BaseModel):
    sku: str
    quantity: int
    unit_price: float


class OrderOut(BaseModel):
    """The body of `GET /orders/{id}`: the order and each state it reached."""

    order_id: str
    email: str
    customer: str
    total: float
    items: list[ItemOut]
    created_at: datetime
    status: State
    progress: list[Step]
    publish_failure: str | None = None  # the relay set the event aside, and why
