"""The event store: append-only in the database itself, and dedupe under concurrency."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from service.store import DeliveryStore
from tests.helpers import delivery, recorded, stored_rows


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
