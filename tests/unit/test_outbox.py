"""The outbox without a network: the table's DDL, the writer's checks and rows, and what a
relay step decides for each row (published, set aside, left for later)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bus.envelope import Event
from bus.errors import ConfigError, InvalidEvent, PublishTimeout, UnknownEventType, UnroutableError
from bus.metrics import Metrics
from bus.outbox import Outbox
from bus.outbox.base import Row, Status
from bus.outbox.relay import Relay
from bus.outbox.schema import Dialect, ddl, dialect_of, insert_sql, script
from bus.topology.model import Topology, from_dict
from tests.conftest import wait_for

DOC = {
    "version": 1,
    "exchanges": {"events": {"type": "topic"}},
    "events": {
        "order.placed": {
            "exchange": "events",
            "schema": {"type": "object", "required": ["order_id"]},
        },
        "order.shipped": {"exchange": "events"},
    },
    "subscribers": {
        "audit": {
            "handlers": "tests.integration.helpers:EMPTY",
            "bindings": [{"exchange": "events", "keys": ["#"]}],
        }
    },
}


@pytest.fixture
def topology() -> Topology:
    return from_dict(DOC, source="test")


@pytest.fixture
def db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    for statement in ddl(Dialect.SQLITE):
        conn.execute(statement)
    return conn


def rows(db: sqlite3.Connection) -> list[dict[str, Any]]:
    db.row_factory = sqlite3.Row
    return [dict(r) for r in db.execute("SELECT * FROM bus_outbox ORDER BY seq")]


# -- the table ---------------------------------------------------------------------------------


def test_dialect_comes_from_the_url_scheme() -> None:
    assert dialect_of("postgresql://u@h/db") is Dialect.POSTGRES
    assert dialect_of("postgres://u@h/db") is Dialect.POSTGRES
    assert dialect_of("postgresql+asyncpg://u@h/db") is Dialect.POSTGRES
    assert dialect_of("sqlite:///.bus/outbox.db") is Dialect.SQLITE
    with pytest.raises(ConfigError, match="sqlite:///path or postgresql"):
        dialect_of("mysql://u:secret@h/db")


def test_postgres_insert_casts_data_to_jsonb_and_sqlite_keeps_text() -> None:
    assert "CAST($3 AS jsonb)" in insert_sql(Dialect.POSTGRES, "dollar")
    assert "CAST(:data AS jsonb)" in insert_sql(Dialect.POSTGRES, "named")
    assert insert_sql(Dialect.SQLITE, "qmark").count("?") == 8


def test_the_sql_script_is_every_statement_and_runs_twice(db: sqlite3.Connection) -> None:
    text = script(Dialect.POSTGRES)
    assert text.count("CREATE") >= 4 and "LISTEN" not in text and "pg_notify" in text
    db.executescript(script(Dialect.SQLITE))  # idempotent over an existing table


def test_a_plain_insert_of_id_type_and_data_is_a_complete_row(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO bus_outbox (id, type, data) VALUES ('x', 'order.shipped', '{}')")
    (row,) = rows(db)
    assert row["source"] == "outbox" and row["created_at"].endswith("Z")
    assert row["failed_at"] is None


# -- the writer --------------------------------------------------------------------------------


def test_add_sync_writes_the_envelope_a_publisher_would_send(
    topology: Topology, db: sqlite3.Connection
) -> None:
    outbox = Outbox(topology, source="shop")
    event_id = outbox.add_sync(
        db, "order.placed", {"order_id": "o-1", "note": "ü"}, correlation_id="o-1",
        causation_id="c-1",
    )  # fmt: skip
    (row,) = rows(db)
    assert row["id"] == event_id and row["type"] == "order.placed" and row["source"] == "shop"
    assert json.loads(row["data"]) == {"order_id": "o-1", "note": "ü"}
    assert row["correlation_id"] == "o-1" and row["causation_id"] == "c-1"
    assert row["traceparent"].startswith("00-") and len(row["traceparent"]) == 55
    assert datetime.fromisoformat(row["created_at"].replace("Z", "+00:00")).tzinfo is not None


@pytest.mark.parametrize(
    ("event_type", "data", "kw", "error"),
    [
        ("order.cancelled", {}, {}, UnknownEventType),
        ("order.placed", {"no": "order_id"}, {}, InvalidEvent),
        ("order.shipped", {"when": datetime.now(UTC)}, {}, InvalidEvent),
        ("order.shipped", {}, {"id": " "}, InvalidEvent),  # as Publisher says it
    ],
    ids=["undeclared type", "schema failure", "not JSON", "empty id"],
)
def test_add_sync_refuses_what_the_publisher_refuses_and_writes_nothing(
    topology: Topology, db: sqlite3.Connection, event_type: str, data: Any, kw: Any, error: type
) -> None:
    with pytest.raises(error):
        Outbox(topology).add_sync(db, event_type, data, **kw)
    assert rows(db) == []


def test_a_rolled_back_transaction_leaves_no_row(topology: Topology, tmp_path: Any) -> None:
    path = tmp_path / "o.db"
    with sqlite3.connect(path) as conn:
        for statement in ddl(Dialect.SQLITE):
            conn.execute(statement)
    conn = sqlite3.connect(path)
    Outbox(topology).add_sync(conn, "order.shipped", {})
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM bus_outbox").fetchone() == (0,)
    conn.close()


def test_add_sync_takes_a_sqlalchemy_session(topology: Topology) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        for statement in ddl(Dialect.SQLITE):
            conn.execute(text(statement))
    with Session(engine) as session, session.begin():
        event_id = Outbox(topology).add_sync(session, "order.shipped", {"a": 1})
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM bus_outbox")).scalar() == event_id


def test_the_wrong_kind_of_connection_is_one_clear_error(
    topology: Topology, db: sqlite3.Connection
) -> None:
    outbox = Outbox(topology)
    with pytest.raises(ConfigError, match=r"use outbox\.add_sync"):
        asyncio.run(outbox.add(db, "order.shipped", {}))
    with pytest.raises(ConfigError, match="cannot write with a dict"):
        outbox.add_sync({}, "order.shipped", {})


# -- one relay step ----------------------------------------------------------------------------


class FakeClaim:
    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.finished: tuple[list[int], list[tuple[int, str]]] | None = None
        self.abandoned = False

    async def finish(self, done: Sequence[int], set_aside: Sequence[tuple[int, str]]) -> None:
        self.finished = (list(done), list(set_aside))

    async def abandon(self) -> None:
        self.abandoned = True


class FakeOutbox:
    def __init__(self, rows: list[Row]) -> None:
        self.claims = [FakeClaim(rows)]

    async def claim(self, limit: int) -> FakeClaim:
        return self.claims[-1]

    async def wait(self, timeout: float) -> None: ...

    async def status(self, sample: int = 20) -> Status:
        return Status(0, 0.0, 0)

    async def retry(self, ids: Sequence[str] | None) -> int:
        return 0

    async def close(self) -> None: ...


class FakePublisher:
    """Answers each event id with a canned failure, or a confirm; ids in *silent* get no
    answer at all (a broker that stopped confirming)."""

    connected = True
    deadline = 10.0

    def __init__(
        self, topology: Topology, failures: dict[str, BaseException], silent: Sequence[str] = ()
    ) -> None:
        from bus.produce.validation import EventChecker

        self.check = EventChecker(topology).check
        self.failures = failures
        self.silent = set(silent)
        self.answer: asyncio.Event | None = None  # set: the silent ones are confirmed
        self.flow: Any = None
        self.sent: list[Event] = []

    async def send(self, event: Event, parent: str | None = None, timer: bool = True) -> None:
        assert not timer, "the relay watches the deadline itself: no timer per event"
        self.sent.append(event)
        if event.id in self.silent:
            self.answer = self.answer or asyncio.Event()
            await self.answer.wait()
        if event.id in self.failures:
            raise self.failures[event.id]

    async def close(self) -> None: ...


def row(seq: int, id: str, type: str = "order.shipped", data: str = "{}") -> Row:
    return Row(seq, id, type, data, "shop", datetime(2026, 1, 1, tzinfo=UTC), "corr", None, None)


def relay_with(
    topology: Topology, rows: list[Row], failures: dict[str, BaseException],
    silent: Sequence[str] = (),
) -> tuple[Relay, FakeOutbox, FakePublisher]:  # fmt: skip
    outbox = FakeOutbox(rows)
    relay = Relay(outbox, topology, "amqp://x", metrics=Metrics(CollectorRegistry()))
    publisher = FakePublisher(topology, failures, silent)
    relay.publisher = publisher  # type: ignore[assignment]
    relay._connected_once = True
    return relay, outbox, publisher


def test_a_step_deletes_confirmed_rows_and_sets_aside_what_is_not_an_event(
    topology: Topology,
) -> None:
    batch = [
        row(1, "a"),
        row(2, "b", data="{nope"),
        row(3, "c", type="order.cancelled"),
        row(4, "d", type="order.placed", data='{"x": 1}'),
        row(5, "e", type="order.placed"),  # data {} fails the schema too
        row(6, "f"),
        row(7, " "),
    ]
    relay, outbox, publisher = relay_with(topology, batch, {"f": UnroutableError("returned")})
    assert asyncio.run(relay.step()) == 7
    done, aside = outbox.claims[0].finished or ([], [])
    assert done == [1]
    reasons = dict(aside)
    assert set(reasons) == {2, 3, 4, 5, 6, 7}
    assert "not JSON" in reasons[2] and "not declared" in reasons[3]
    assert "schema" in reasons[4] and reasons[6].startswith("unroutable")
    assert [e.id for e in publisher.sent] == ["a", "f"], "only events are sent, in row order"
    sent = publisher.sent[0]
    assert sent.source == "shop" and sent.correlation_id == "corr"
    assert sent.time == datetime(2026, 1, 1, tzinfo=UTC), "the event's time is the row's"


def test_an_unconfirmed_row_stays_for_the_next_try_and_the_step_reports_it(
    topology: Topology,
) -> None:
    relay, outbox, _ = relay_with(
        topology, [row(1, "a"), row(2, "b"), row(3, "c")], {"c": PublishTimeout("no confirm")}
    )
    with pytest.raises(PublishTimeout):
        asyncio.run(relay.step())
    assert outbox.claims[0].finished == ([1, 2], []), "confirmed rows are deleted all the same"


def test_a_row_without_any_answer_is_given_up_after_the_deadline_and_the_rest_deleted(
    topology: Topology,
) -> None:
    relay, outbox, publisher = relay_with(
        topology, [row(1, "a"), row(2, "b"), row(3, "c")], {}, silent=["b"]
    )
    publisher.deadline = 0.2
    with pytest.raises(PublishTimeout, match="no confirm from the broker"):
        asyncio.run(relay.step())
    assert outbox.claims[0].finished == ([1, 3], [])


def test_a_broker_block_is_waited_out_past_the_deadline(topology: Topology) -> None:
    relay, outbox, publisher = relay_with(topology, [row(1, "a"), row(2, "b")], {}, silent=["b"])
    publisher.deadline = 0.1
    publisher.flow = SimpleNamespace(blocked=True)

    async def block_then_confirm() -> int:
        step = asyncio.create_task(relay.step())
        await asyncio.sleep(0.5)  # five deadlines of block
        assert not step.done(), "a blocked broker is no reason to give rows up"
        publisher.flow.blocked = False
        assert publisher.answer is not None
        publisher.answer.set()  # the broker reads again and confirms
        return await step

    assert asyncio.run(block_then_confirm()) == 2
    assert outbox.claims[0].finished == ([1, 2], [])


def test_an_empty_claim_is_given_back(topology: Topology) -> None:
    relay, outbox, _ = relay_with(topology, [], {})
    assert asyncio.run(relay.step()) == 0
    assert outbox.claims[0].abandoned


class OutboxGoingAway(FakeOutbox):
    """Answers claims until `down`, then refuses connections (PostgreSQL stopped)."""

    def __init__(self) -> None:
        super().__init__([])
        self.down = False
        self.refused = 0

    async def claim(self, limit: int) -> FakeClaim:
        if self.down:
            self.refused += 1
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
        return self.claims[-1]


def test_readyz_turns_503_when_the_outbox_database_refuses_connections(
    topology: Topology,
) -> None:
    relay, _, _ = relay_with(topology, [], {})
    outbox = relay.outbox = OutboxGoingAway()

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        await wait_for(lambda: relay.ready, 5, "ready before the database goes away")
        outbox.down = True
        await wait_for(lambda: outbox.refused >= 2, 5, "claims refused twice")
        assert not relay.ready, "ready while the outbox refuses connections"
        assert relay.why_not_ready() == "the outbox is not reachable"
        stop.set()
        await task

    asyncio.run(scenario())
