"""Render an invoice for every placed order, in the process pool (CPU-bound), and store it.

`INVOICE_DIR` (default `.bus/invoices`): the invoice of event E goes to `<dir>/<E[:2]>/<E>.pdf`,
written to a temporary file and renamed over, so a redelivery overwrites the same file and a
reader never sees half a PDF. `INVOICE_VAT_RATE` (default 0.20; prices include VAT).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from bus import ProcessContext, Router
from subscribers.invoicing.render import OrderPlaced, render

router = Router()


def invoice_path(event_id: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Where the invoice of *event_id* is stored: derived from the id alone."""
    base = Path(root or os.environ.get("INVOICE_DIR", ".bus/invoices"))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in event_id)
    return base / safe[:2] / f"{safe}.pdf"


@router.on("order.placed", executor="process")
def render_invoice(order: OrderPlaced, ctx: ProcessContext) -> None:
    issued = ctx.time or datetime.now(UTC)
    number = f"INV-{issued:%Y%m%d}-{order.order_id}"
    vat = Decimal(os.environ.get("INVOICE_VAT_RATE", "0.20"))
    pdf = render(order, number=number, issued=issued, vat_rate=vat)
    path = invoice_path(ctx.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(pdf)
    os.replace(tmp, path)  # atomic: a redelivery overwrites the same file
    ctx.publish("invoice.rendered", {"order_id": order.order_id, "number": number,
                                     "path": str(path), "bytes": len(pdf)})  # fmt: skip
    ctx.log.info("invoice %s for %s written to %s", number, order.order_id, path)
