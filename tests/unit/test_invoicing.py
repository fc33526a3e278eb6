"""The invoicing service: a real PDF per order, rendered in a worker process, stored by event id."""

from __future__ import annotations

from pathlib import Path

import pytest
from pypdf import PdfReader

from bus.testing import TestBus
from subscribers.invoicing.handlers import invoice_path

TOPOLOGY = Path(__file__).resolve().parents[2] / "topology" / "topology.yaml"
ORDER = {"order_id": "o-7", "email": "ada@example.com", "customer": "Ada Lovelace", "total": 37.97,
         "items": [{"sku": "BOOK-1", "quantity": 2, "unit_price": 12.99},
                   {"sku": "MUG-2", "quantity": 1, "unit_price": 11.99}]}  # fmt: skip


def text_of(path: Path) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(path).pages)


async def test_an_order_gets_a_pdf_invoice_with_its_items_vat_and_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INVOICE_DIR", str(tmp_path))
    async with TestBus(TOPOLOGY, subscribers=["invoicing"]) as tb:
        event_id = await tb.publish("order.placed", ORDER, id="evt-invoice-1")
        await tb.settle()
        assert [h.id for h in tb.handled("invoicing")] == [event_id]
        assert tb.pending("analytics") == 2, "order.placed and the invoice.rendered follow-up"
    path = invoice_path(event_id, tmp_path)
    assert path == tmp_path / "ev" / "evt-invoice-1.pdf"
    text = text_of(path)
    for expected in ("Invoice INV-", "o-7", "Ada Lovelace", "BOOK-1", "MUG-2", "25.98", "11.99",
                     "Net", "31.64", "VAT 20%", "6.33", "Total", "37.97"):  # fmt: skip
        assert expected in text, f"{expected!r} not in the invoice:\n{text}"


async def test_a_redelivery_overwrites_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INVOICE_DIR", str(tmp_path))
    for customer in ("First Name", "Second Name"):  # two buses: no shared idempotency store
        async with TestBus(TOPOLOGY, subscribers=["invoicing"]) as tb:
            await tb.publish("order.placed", {**ORDER, "customer": customer}, id="evt-again")
            await tb.settle()
    (only,) = [p for p in tmp_path.rglob("*") if p.is_file()]  # noqa: ASYNC240 - a test's look
    assert only == invoice_path("evt-again", tmp_path)
    assert "Second Name" in text_of(only)
