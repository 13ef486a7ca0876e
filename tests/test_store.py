"""The event store: append-only in the database itself, and dedupe under concurrency."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import OperationalError
from psycopg import sql

from domain.deliveries import DeliveryState
from service.eventstore.store import (
    _PROBE_INTERVAL,
    DeliveryRecorded,
    DeliveryStore,
    StoreUnavailable,
)
from tests.helpers import delivery, recorded, stored_rows, wait_until


def test_the_stored_event_and_the_stored_form_have_the_same_fields() -> None:
    # The library's event class and the stored form's Struct declare the same fields: the
    # event's are written, the Struct's read back, and neither may drop what the other has.
    event = {f.name for f in dataclasses.fields(DeliveryRecorded)}
    assert event - {"originator_id", "originator_version"} == set(DeliveryState.__struct_fields__)


def test_a_stored_delivery_reads_back_as_it_was_written(store: DeliveryStore) -> None:
    written = recorded(delivery(delivery_id="d-1"), "d-1")
    (position,) = store.append([written])
    (stored,) = store.read(0, 10)
    assert (stored.position, stored.key) == (position, written.originator_id)
    assert stored.state == DeliveryState(
        **{f: getattr(written, f) for f in DeliveryState.__struct_fields__}
    )


@pytest.fixture
def store(database_url: str) -> Iterator[DeliveryStore]:
    store = DeliveryStore(database_url)
    yield store
    store.close()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE rollcall.deliveries_events SET topic = 'forged'",
        "DELETE FROM rollcall.deliveries_events",
        "TRUNCATE rollcall.deliveries_events",
    ],
)
def test_stored_deliveries_cannot_be_changed(
    store: DeliveryStore, database_url: str, statement: str
) -> None:
    store.append([recorded(delivery())])
    with (
        psycopg.connect(database_url) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"),
    ):
        conn.execute(statement)
    assert len(stored_rows(database_url)) == 1


def test_in_batch_and_cross_batch_duplicates(store: DeliveryStore) -> None:
    a, b = recorded(delivery(attendee_id="a")), recorded(delivery(attendee_id="b"))
    first = store.append([a, recorded(a.body), b])
    assert first[0] is not None and first[2] is not None and first[1] is None
    second = store.append([recorded(b.body), recorded(delivery(attendee_id="c")), recorded(a.body)])
    assert second[0] is None and second[2] is None
    assert second[1] is not None and second[1] > max(first[0], first[2])
    assert store.head() == second[1]


def test_concurrent_appends_of_the_same_keys_store_each_once(database_url: str) -> None:
    stores = [DeliveryStore(database_url) for _ in range(4)]
    bodies = [delivery(attendee_id=f"a-{i}", delivery_id=f"d-{i}") for i in range(40)]
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            batches = [
                pool.submit(
                    stores[n % 4].append,
                    [recorded(body, f"d-{i}") for i, body in enumerate(bodies)],
                )
                for n in range(8)
            ]
            results = [batch.result() for batch in batches]
    finally:
        for s in stores:
            s.close()
    positions = [p for result in results for p in result if p is not None]
    assert len(positions) == 40
    assert len(set(positions)) == 40
    assert len(stored_rows(database_url)) == 40


def test_read_back_in_position_order(store: DeliveryStore) -> None:
    bodies = [delivery(attendee_id=f"r-{i}") for i in range(5)]
    positions = [p for p in store.append([recorded(body) for body in bodies]) if p is not None]
    assert len(positions) == 5
    read = store.read(after=0, limit=10)
    assert [item.position for item in read] == positions
    assert [item.state.body for item in read] == bodies
    assert store.read(after=positions[2], limit=1)[0].position == positions[3]


def test_schema_setup_is_idempotent_and_keeps_data(database_url: str) -> None:
    first = DeliveryStore(database_url)
    first.append([recorded(delivery(attendee_id="kept"))])
    first.close()
    second = DeliveryStore(database_url)
    try:
        assert [item.state.body for item in second.read(0, 10)] == [delivery(attendee_id="kept")]
    finally:
        second.close()


def test_a_batch_far_larger_than_a_socket_buffer_is_stored(store: DeliveryStore) -> None:
    # Pipeline mode in psycopg 3.3 could stop flushing such a message and wait forever.
    padding = "x" * 20_000
    batch = [recorded(delivery(attendee_id=f"big-{n}", pad=padding)) for n in range(300)]
    done = threading.Event()
    results: list[list[int | None]] = []

    def append() -> None:
        results.append(store.append(batch))
        done.set()

    threading.Thread(target=append, daemon=True).start()
    assert done.wait(60), "the append hung"
    assert all(p is not None for p in results[0])


def test_while_the_database_is_down_appends_fail_fast_and_resume_as_it_returns(
    database_url: str, server_url: str
) -> None:
    # Found by the drill's outage scenario: every append waited out the pool's timeout (5 s)
    # while the database was down, and after it came back the pool reconnected only on its
    # own exponential backoff, several seconds later. With a store timeout of 120 s, either
    # fault trips the 60 s liveness bound below; no speed is measured.
    store = DeliveryStore(database_url, timeout=120.0)
    pool = ThreadPoolExecutor(max_workers=1)

    def append(attendee: str) -> list[int | None]:
        return pool.submit(store.append, [recorded(delivery(attendee_id=attendee))]).result(60)

    def probe_due() -> bool:
        down_since = store._unreachable_at
        return down_since is None or time.monotonic() - down_since > _PROBE_INTERVAL

    try:
        append("before")
        name = str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])
        _allow_connections(server_url, name, allowed=False)
        try:
            for n in range(4):
                with pytest.raises(StoreUnavailable):
                    append(f"during-{n}")
                wait_until(probe_due)  # the next append asks the database again
        finally:
            _allow_connections(server_url, name, allowed=True)
        wait_until(probe_due)
        assert append("after")[0] is not None  # the first try after it is back, no retry
    finally:
        pool.shutdown(wait=False)
        store.close()
    bodies = [row["body"] for row in stored_rows(database_url)]
    assert bodies == [delivery(attendee_id="before"), delivery(attendee_id="after")]


def _allow_connections(server_url: str, name: str, *, allowed: bool) -> None:
    """An outage of one database without stopping the shared server."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.Literal(allowed)
            )
        )
        if not allowed:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )


def test_a_commit_whose_answer_was_lost_is_answered_accepted_not_duplicate(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the drill's outage scenario: PostgreSQL stopped after a batch's commit but
    # before its answer; intake said 503 ("nothing stored") and then "duplicate" to the retry.
    put = store._app.events.put
    calls = []

    def commit_then_lose_the_answer(events: Any, **kwargs: Any) -> Any:
        calls.append(put(events, **kwargs))
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(store._app.events, "put", commit_then_lose_the_answer)
    lost = recorded(delivery(attendee_id="lost"))
    # The database still answers: the retry on fresh connections finds it stored.
    [position] = store.append([lost])
    assert len(calls) == 1
    assert position == calls[0][0].notification.id
    assert store.append([recorded(lost.body)]) == [None]  # from now on, a duplicate


def test_a_delivery_answered_503_but_stored_is_accepted_on_its_retry(
    store: DeliveryStore,
) -> None:
    first = recorded(delivery(attendee_id="late"))
    [position] = store.append([first])
    store.unacknowledged([first.originator_id])  # as the writer does when it gave up waiting
    assert store.append([recorded(first.body)]) == [position]
    assert store.append([recorded(first.body)]) == [None]
    fresh = recorded(delivery(attendee_id="fresh"))
    store.unacknowledged([fresh.originator_id])  # a failed attempt that had not committed
    [stored] = store.append([fresh])
    assert stored is not None
    assert store.append([recorded(fresh.body)]) == [None]


def test_an_append_commits_synchronously_whatever_the_database_says(database_url: str) -> None:
    # A database (or role) default of synchronous_commit = off would let intake answer 200
    # before the commit reached the disk; the append's transaction pins it on.
    name = sql.Identifier(str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(name))
    store = DeliveryStore(database_url)  # new connections: they start with it off
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
            conn.execute(
                "CREATE TABLE public.commit_settings (setting text); "
                "CREATE FUNCTION public.note_setting() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN INSERT INTO public.commit_settings "
                "VALUES (current_setting('synchronous_commit')); RETURN NULL; END $$; "
                "CREATE TRIGGER note_setting AFTER INSERT ON rollcall.deliveries_events "
                "FOR EACH STATEMENT EXECUTE FUNCTION public.note_setting()"
            )
        store.append([recorded(delivery(attendee_id="durable"))])
        with psycopg.connect(database_url) as conn:
            settings = conn.execute("SELECT setting FROM public.commit_settings").fetchall()
        assert settings == [("on",)]
    finally:
        store.close()
