"""The stand-ins for the services' outside world (demo.stubs): one copy for the demo, the tests
and the compose file."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage

import httpx

from demo.stubs import FlakyWarehouse, MailSink, free_port


def test_flaky_warehouse_fails_first_calls_then_accepts_and_counts_recoveries() -> None:
    with FlakyWarehouse(fail_first=2) as wh:
        statuses = [
            httpx.post(wh.url, json={"order_id": oid}, timeout=5).status_code
            for oid in ("o-1", "o-1", "o-1", "o-2")
        ]
        assert statuses == [503, 503, 201, 201]
        assert wh.calls[2].body == {"order_id": "o-1"}
        stats = wh.stats()
        assert (stats.calls, stats.failed, stats.accepted, stats.recovered) == (4, 2, 2, 1)


def test_mail_sink_keeps_mails_and_counts_follow_ups() -> None:
    with MailSink() as sink:
        port = int(sink.url.rsplit(":", 1)[1])
        for subject in ("Your order o-1 is confirmed", "How was your order o-1?"):
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = "shop@example.com", "ada@example.com", subject
            msg.set_content("hello")
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
                smtp.send_message(msg)
        assert sink.delivered == 2
        assert sink.follow_ups == 1
        assert sink.messages[0]["To"] == "ada@example.com"


def test_warehouse_runs_as_the_compose_containers_command() -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "demo.stubs", "warehouse", "--host", "127.0.0.1"]
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                answer = httpx.post(
                    f"http://127.0.0.1:{port}/orders", json={"order_id": "o-9"}, timeout=2
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the warehouse did not answer within 15 s"
                time.sleep(0.1)
        assert answer.status_code == 201
        assert answer.json() == {"reference": "WH-1"}
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "warehouse: order o-9 -> 201" in out
