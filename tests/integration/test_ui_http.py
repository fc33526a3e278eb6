"""`bus ui` over HTTP (httpx over ASGI) against the real broker: the JSON API's shapes, the
actions of the API and the forms, and the password kept out of every page."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for
from tests.integration.helpers import queue_depth
from tests.integration.ui_kit import TOKEN, login, three_parked
from tests.integration.ui_kit import ui_client as client

pytestmark = pytest.mark.rabbitmq4  # also runs on RabbitMQ 4.0 (make test's second pass)

BEARER = {"Authorization": f"Bearer {TOKEN}", "X-Bus-Operator": "script"}


async def test_api_reports_status_and_the_dlq_grouped_by_exception(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    async with (
        three_parked(amqp_url, prefix) as parked,
        client(parked.app(amqp_url, tmp_path)) as c,
    ):
        status = (await c.get("/api/status")).json()
        [email] = status["subscribers"]
        assert email["subscriber"] == "email" and email["queue"]["consumers"] == 1
        assert email["dlq"] == {"name": parked.dlq, "exists": True, "ready": 3, "consumers": 0}
        assert email["retries"][0]["name"] == f"{prefix}.email.retry.100ms"
        assert 0 <= email["dlq_oldest_age_seconds"] < 60
        assert status["outbox"]["available"] is False and "no outbox" in status["outbox"]["detail"]
        assert status["scheduler"] == {"lock_queue": "bus.scheduler.lock", "leader": None,
                                       "schedules": []}  # fmt: skip

        dlq = (await c.get("/api/subscribers/email/dlq")).json()
        assert dlq["count"] == 3 and dlq["browsed"] == 3 and dlq["truncated"] is False
        groups = {g["exception_type"]: g for g in dlq["groups"]}
        assert set(groups) == {"TimeoutError", "bus.InvalidMessage"}, groups
        timeout = groups["TimeoutError"]
        assert timeout["count"] == 2 and timeout["first_seen"] <= timeout["last_seen"]
        assert {m["id"] for m in timeout["messages"]} == {"e-1", "e-2"}
        assert set(timeout["messages"][0]) == {"id", "type", "reason", "attempts",
            "exception_type", "exception_message", "failed_at"}  # fmt: skip
        assert timeout["messages"][0]["reason"] == "retries-exhausted"
        assert timeout["sample"]["exception_message"].startswith("smtp timed out for o-")
        [invalid] = groups["bus.InvalidMessage"]["messages"]
        assert invalid["id"] == "e-3" and invalid["reason"] == "invalid"

        story = (await c.get("/api/subscribers/email/dlq/message", params={"id": "e-1"})).json()
        assert story["body"] == {"order_id": "o-1", "email": "c1@example.com"}
        assert "Traceback" in story["stacktrace"] and story["headers"]["bus-attempt"] == 2
        missing = await c.get("/api/subscribers/email/dlq/message", params={"id": "nope"})
        assert missing.status_code == 404
        assert (await c.get("/api/subscribers/nobody/dlq")).status_code == 404


async def test_api_replays_by_id_and_group_edits_and_purges_with_the_token(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    async with (
        three_parked(amqp_url, prefix) as parked,
        client(parked.app(amqp_url, tmp_path)) as c,
    ):
        parked.mailer.broken = False
        r = await c.post("/api/subscribers/email/dlq/replay", json={"ids": ["e-2", "zz"]},
                         headers=BEARER)  # fmt: skip
        assert r.json() == {"replayed": 1, "ids": ["e-2"], "missing": ["zz"]}, r.text
        await wait_for(lambda: [h.id for h in parked.mailer.handled] == ["e-2"],
                       message="e-2 handled after its replay")  # fmt: skip
        bad = await c.post("/api/subscribers/email/dlq/replay", json={"all": True, "ids": []},
                           headers=BEARER)  # fmt: skip
        assert bad.status_code == 422, "one selection at a time"

        refused = await c.post("/api/subscribers/email/dlq/edit",
                               json={"id": "e-3", "data": {"order_id": "o-3"}}, headers=BEARER)  # fmt: skip
        assert refused.status_code == 422
        assert "email" in json.dumps(refused.json()["detail"]["problems"])
        assert await queue_depth(amqp_url, parked.dlq) == 2, "a refused edit sends nothing"
        fixed = await c.post("/api/subscribers/email/dlq/edit", headers=BEARER,
                             json={"id": "e-3", "data": {"order_id": "o-3", "email": "x@y.z"}})  # fmt: skip
        assert fixed.json() == {"replayed": "e-3"}, fixed.text
        await wait_for(lambda: len(parked.mailer.handled) == 2, message="edited e-3 handled")
        e3 = parked.mailer.handled[1]
        assert (e3.id, e3.email, e3.attempt) == ("e-3", "x@y.z", 1)
        assert e3.headers["bus-edited-by"].startswith("script (bearer")
        assert e3.headers["bus-edited-at"].endswith("Z")

        parked.mailer.broken = True  # e-1 goes round the ladder again and parks once more
        started = time.monotonic()
        r = await c.post("/api/subscribers/email/dlq/replay",
                         json={"group": "TimeoutError", "rate": 4}, headers=BEARER)  # fmt: skip
        assert r.json()["ids"] == ["e-1"]
        assert time.monotonic() - started >= 0.25, "at 4 per second, one message takes 1/4 s"

        async def parked_again() -> bool:
            return await queue_depth(amqp_url, parked.dlq) == 1

        await wait_for(parked_again, message="e-1 parked again")
        purged = await c.post("/api/subscribers/email/dlq/purge", headers=BEARER)
        assert purged.json() == {"purged": 1}
        assert await queue_depth(amqp_url, parked.dlq) == 0


async def test_forms_replay_a_selection_with_the_session_and_csrf_and_log_who(
    amqp_url: str, prefix: str, tmp_path: Path, caplog: object
) -> None:
    import logging

    assert hasattr(caplog, "set_level")
    caplog.set_level(logging.INFO, logger="bus.ui")
    async with (
        three_parked(amqp_url, prefix) as parked,
        client(parked.app(amqp_url, tmp_path)) as c,
    ):
        parked.mailer.broken = False
        csrf = await login(c, "grace")
        page = await c.get("/subscribers/email/dlq")
        assert page.status_code == 200 and "TimeoutError" in page.text
        assert "guest:guest" not in page.text and "guest:guest" not in (await c.get("/")).text
        r = await c.post("/subscribers/email/dlq/replay",
                         data={"csrf": csrf, "action": "selected", "id": ["e-1", "e-2"]})  # fmt: skip
        assert r.status_code == 303 and "replayed+2" in r.headers["location"], r.text
        await wait_for(lambda: len(parked.mailer.handled) == 2, message="the selection handled")
        refused = await c.post("/subscribers/email/dlq/edit",
                               data={"csrf": csrf, "id": "e-3", "body": '{"order_id": 3}'})  # fmt: skip
        assert refused.status_code == 422 and "schema at order_id" in refused.text
        r = await c.post("/subscribers/email/dlq/purge", data={"csrf": csrf, "confirm": "no"})
        assert "not+purged" in r.headers["location"]
        assert await queue_depth(amqp_url, parked.dlq) == 1
    logged = [r.getMessage() for r in caplog.records]  # type: ignore[attr-defined]
    assert any("grace (127.0.0.1) replayed 2 message(s)" in m and "ids e-1, e-2" in m
               for m in logged), logged  # fmt: skip


async def test_overview_shows_the_outbox_lag_and_the_scheduler_leader_with_its_firings(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    import asyncio
    import sqlite3

    from bus.outbox import Outbox, open_outbox
    from bus.scheduling.leader import Scheduler
    from bus.settings import Settings
    from bus.topology.model import from_dict
    from bus.ui import UiConfig, create_app
    from tests.integration.helpers import applied
    from tests.integration.test_scheduler import delete_queues, scheduled_doc

    topology = from_dict(scheduled_doc(prefix), source=f"test:{prefix}")
    db = tmp_path / "outbox.db"
    await (await open_outbox(f"sqlite:///{db}", create=True)).close()
    with sqlite3.connect(db) as conn:
        for i in range(3):
            Outbox(topology).add_sync(conn, "tick.second", {"n": i})
    lock = f"{prefix}.lock"
    settings = Settings(url=amqp_url, outbox_url=f"sqlite:///{db}")
    app = create_app(UiConfig(settings, lock_queue=lock), topology)
    stop = asyncio.Event()
    async with applied(amqp_url, topology), client(app) as c:
        before = (await c.get("/api/status")).json()
        assert before["outbox"]["available"] and before["outbox"]["pending"] == 3
        assert before["scheduler"]["leader"]["held"] is False, "no replica runs yet"
        sched = Scheduler(amqp_url, topology, lock_queue=lock)
        task = asyncio.create_task(sched.run(stop))
        try:

            async def recorded() -> dict[str, object] | None:
                s = (await c.get("/api/status")).json()["scheduler"]
                return s if s["leader"]["held"] and s["schedules"][0]["last_fired"] else None

            s = await wait_for(recorded, timeout=15, message="a leader that fired once")
            assert s["lock_queue"] == lock and s["leader"]["last_leader"]
            [every] = s["schedules"]
            assert every["name"] == "every-second" and every["event"] == "tick.second"
            assert len(every["next"]) == 3 and every["next"][0] > every["last_fired"]
            page = await c.get("/")
            assert "elected" in page.text and "every-second" in page.text
            assert ">3</td>" in page.text, "the outbox's 3 pending rows"
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await delete_queues(amqp_url, lock, f"{lock}.state")


async def test_bus_ui_serves_loopback_read_only_and_exits_0_on_sigterm(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    import asyncio
    import os
    import signal
    import subprocess
    import sys

    import yaml

    from tests.integration.helpers import topology_doc
    from tests.integration.ui_kit import SUBS, free_port

    topo_file = tmp_path / "topology.yaml"
    topo_file.write_text(yaml.safe_dump(topology_doc(prefix, SUBS)))
    port = free_port()
    env = {**os.environ, "BUS_URL": amqp_url, "BUS_TOPOLOGY": str(topo_file),
           "BUS_OUTBOX_URL": f"sqlite:///{tmp_path / 'none.db'}"}  # fmt: skip
    env.pop("BUS_UI_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bus.cli", "ui", "--port", str(port)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:

            async def up() -> bool:
                try:
                    return (await c.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(up, timeout=20, message="bus ui answering /healthz")
            page = await c.get("/")
            assert page.status_code == 200 and "read-only" in page.text
            assert "guest:guest" not in page.text
            refused = await c.post("/api/subscribers/email/dlq/purge")
            assert refused.status_code == 401
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 15)
        assert code == 0, proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
