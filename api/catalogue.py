"""The shop's small catalogue and the pricing of an order. Prices are integer cents."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

CATALOGUE: Mapping[str, int] = {
    "BOOK-1": 1299,  # "Designing Data-Intensive Applications"
    "BOOK-2": 3450,  # "Enterprise Integration Patterns"
    "MUG-1": 899,
    "TSHIRT-M": 1999,
    "TSHIRT-L": 1999,
    "STICKER": 150,
}


class UnknownSku(ValueError):
    """An item names a SKU the catalogue does not sell."""

    def __init__(self, skus: list[str]) -> None:
        self.skus = skus
        known = ", ".join(sorted(CATALOGUE))
        super().__init__(f"unknown sku {', '.join(map(repr, skus))}: the catalogue sells {known}")


@dataclass(frozen=True)
class Line:
    """One priced line of an order."""

    sku: str
    quantity: int
    unit_cents: int

    @property
    def cents(self) -> int:
        return self.quantity * self.unit_cents


def price(items: Iterable[tuple[str, int]], catalogue: Mapping[str, int] = CATALOGUE) -> list[Line]:
    """Priced lines for (sku, quantity) pairs; raises UnknownSku naming every unknown one."""
    pairs = list(items)
    unknown = sorted({sku for sku, _ in pairs if sku not in catalogue})
    if unknown:
        raise UnknownSku(unknown)
    return [Line(sku, quantity, catalogue[sku]) for sku, quantity in pairs]


def total_cents(lines: Iterable[Line]) -> int:
    return sum(line.cents for line in lines)


def as_amount(cents: int) -> float:
    """Cents as the decimal amount the events and responses carry (12.99)."""
    return round(cents / 100, 2)
