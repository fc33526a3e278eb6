"""The email service's "how was your order?" mail: a delayed event, 3 days after the order."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest

from bus.testing import TestBus
from subscribers.email import handlers

TOPOLOGY = Path(__file__).resolve().parents[2] / "topology" / "topology.yaml"


async def test_the_follow_up_mail_goes_out_three_days_after_the_confirmation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[float, str]] = []
    tb = TestBus(TOPOLOGY, subscribers=["email"])

    async def deliver(msg: EmailMessage) -> None:
        sent.append((tb.now, str(msg["Subject"])))

    monkeypatch.setattr(handlers, "deliver", deliver)
    monkeypatch.delenv("EMAIL_FOLLOW_UP_DELAY", raising=False)
    async with tb:
        await tb.publish("order.placed", {"order_id": "o-9", "email": "ada@example.com",
                                          "customer": "Ada", "items": []})  # fmt: skip
        await tb.settle()
    assert sent == [(0.0, "Your order o-9 is confirmed"), (259_200.0, "How was your order o-9?")]
