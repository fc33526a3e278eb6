"""Render and send customer mails. `SMTP_URL` (smtp://host:port), `MAIL_FROM`.

After the confirmation it schedules the "how was your order?" mail as a delayed event,
`order.review_requested`, `EMAIL_FOLLOW_UP_DELAY` later (3d; the demo uses seconds): the
broker holds it meanwhile (`bus.topology.delays`), and this service sends it when it arrives.
"""

from __future__ import annotations

import os
from email.message import EmailMessage
from urllib.parse import urlsplit

import aiosmtplib
from pydantic import BaseModel, Field

from bus import Context, Router

router = Router()


class Item(BaseModel):
    sku: str
    quantity: int = Field(ge=1)


class OrderPlaced(BaseModel):
    order_id: str
    email: str
    customer: str = "there"
    total: float = 0.0
    items: list[Item] = Field(default_factory=list)


class OrderShipped(BaseModel):
    order_id: str
    email: str | None = None


def render_confirmation(order: OrderPlaced, event_id: str) -> EmailMessage:
    """The confirmation mail. Its Message-ID derives from the event id, so a receiving system
    can recognise a duplicate too."""
    msg = EmailMessage()
    msg["From"] = os.environ.get("MAIL_FROM", "shop@example.com")
    msg["To"] = order.email
    msg["Subject"] = f"Your order {order.order_id} is confirmed"
    msg["Message-ID"] = f"<{event_id}@bus.email>"
    lines = [f"Hello {order.customer},", "", f"Thank you for your order {order.order_id}.", ""]
    lines += [f"  {i.quantity} x {i.sku}" for i in order.items]
    lines += ["", f"Total: {order.total:.2f}", "", "We will let you know when it ships."]
    msg.set_content("\n".join(lines))
    return msg


async def deliver(msg: EmailMessage) -> None:
    url = urlsplit(os.environ.get("SMTP_URL", "smtp://localhost:1025"))
    await aiosmtplib.send(
        msg,
        hostname=url.hostname or "localhost",
        port=url.port or 25,
        username=url.username,
        password=url.password,
        start_tls=url.scheme == "smtp+starttls",
        use_tls=url.scheme == "smtps",
        timeout=10,
    )


class ReviewRequested(BaseModel):
    order_id: str
    email: str
    customer: str = "there"


@router.on("order.placed")
async def send_confirmation(order: OrderPlaced, ctx: Context) -> None:
    await deliver(render_confirmation(order, ctx.id))
    ctx.log.info("confirmation for %s sent to %s", order.order_id, order.email)
    follow_up = {"order_id": order.order_id, "email": order.email, "customer": order.customer}
    await ctx.publish(
        "order.review_requested", follow_up, delay=os.environ.get("EMAIL_FOLLOW_UP_DELAY", "3d")
    )


@router.on("order.review_requested")
async def send_follow_up(event: ReviewRequested, ctx: Context) -> None:
    """The delayed "how was your order?" mail."""
    msg = EmailMessage()
    msg["From"] = os.environ.get("MAIL_FROM", "shop@example.com")
    msg["To"] = event.email
    msg["Subject"] = f"How was your order {event.order_id}?"
    msg["Message-ID"] = f"<{ctx.id}@bus.email>"
    msg.set_content(
        f"Hello {event.customer},\n\nyour order {event.order_id} should be with you by now. "
        "How was it? Just reply to this mail."
    )
    await deliver(msg)
    ctx.log.info("follow-up for %s sent to %s", event.order_id, event.email)


@router.on("order.shipped")
async def send_shipped(event: OrderShipped, ctx: Context) -> None:
    if not event.email:
        return  # nobody to tell
    msg = EmailMessage()
    msg["From"] = os.environ.get("MAIL_FROM", "shop@example.com")
    msg["To"] = event.email
    msg["Subject"] = f"Your order {event.order_id} has shipped"
    msg["Message-ID"] = f"<{ctx.id}@bus.email>"
    msg.set_content(f"Good news: order {event.order_id} is on its way.")
    await deliver(msg)
