"""The invoice as a PDF (fpdf2): the items, the net amounts, VAT and the total."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from fpdf import FPDF
from pydantic import BaseModel, Field

CENT = Decimal("0.01")


class Item(BaseModel):
    sku: str
    quantity: int = Field(ge=1)
    unit_price: float | None = None  # gross, VAT included, as the shop shows it


class OrderPlaced(BaseModel):
    order_id: str
    email: str
    customer: str = "Customer"
    total: float = 0.0
    items: list[Item] = Field(default_factory=list)


class Amounts(BaseModel):
    net: Decimal
    vat: Decimal
    gross: Decimal


def amounts(order: OrderPlaced, vat_rate: Decimal) -> Amounts:
    """Prices include VAT: net = gross / (1 + rate), VAT the rest, rounded to the cent."""
    gross = Decimal(str(order.total)).quantize(CENT)
    net = (gross / (1 + vat_rate)).quantize(CENT, ROUND_HALF_UP)
    return Amounts(net=net, vat=gross - net, gross=gross)


def render(order: OrderPlaced, *, number: str, issued: datetime, vat_rate: Decimal) -> bytes:
    """The invoice's PDF bytes."""
    pdf = FPDF()
    pdf.set_title(f"Invoice {number}")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 12, f"Invoice {number}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=11)
    for line in (f"Order: {order.order_id}", f"Customer: {order.customer} <{order.email}>",
                 f"Date: {issued:%Y-%m-%d}"):  # fmt: skip
        pdf.cell(0, 7, line, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font("Helvetica", "B", 11)
    for text, width, align in (("Item", 90, "L"), ("Qty", 20, "R"), ("Unit", 35, "R"),
                               ("Amount", 35, "R")):  # fmt: skip
        pdf.cell(width, 8, text, border="B", align=align)
    pdf.ln()
    pdf.set_font("Helvetica", size=11)
    for item in order.items:
        unit = Decimal(str(item.unit_price)).quantize(CENT) if item.unit_price is not None else None
        line = f"{unit * item.quantity:.2f}" if unit is not None else "-"
        pdf.cell(90, 7, item.sku)
        pdf.cell(20, 7, str(item.quantity), align="R")
        pdf.cell(35, 7, f"{unit:.2f}" if unit is not None else "-", align="R")
        pdf.cell(35, 7, line, align="R", new_x="LMARGIN", new_y="NEXT")
    a = amounts(order, vat_rate)
    pdf.ln(4)
    for label, value in (("Net", a.net), (f"VAT {vat_rate * 100:.0f}%", a.vat),
                         ("Total", a.gross)):  # fmt: skip
        pdf.set_font("Helvetica", "B" if label == "Total" else "", 11)
        pdf.cell(145, 7, label, align="R")
        pdf.cell(35, 7, f"{value:.2f}", align="R", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
