"""Group commit: batching, duplicates, a failing delivery, backpressure, an idle service."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable

import httpx
import psycopg
import pytest

from service.eventstore.store import DeliveryRecorded, DeliveryStore, StoreUnavailable
from service.eventstore.writer import GroupCommitWriter
from tests.helpers import (
    RunningService,
    delivery,
    recorded,
    stored_rows,
    token_headers,
    until_true,
)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[DeliveryStore]:
    store = await asyncio.to_thread(DeliveryStore, database_url)
    yield store
    await asyncio.to_thread(store.close)


@pytest.fixture
async def writer(store: DeliveryStore) -> AsyncIterator[GroupCommitWriter]:
    writer = GroupCommitWriter(
        store, batch_max=64, linger=0.002, queue_max=1000, timeout=10, writers=2
    )
    writer.start()
    yield writer
    await writer.close()


async def test_concurrent_posts_are_batched_and_stored_exactly_once(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service()
    bodies = [
        delivery("AttendeeCheckedIn", attendee_id=f"a-{i}", delivery_id=f"d-{i}")
        for i in range(300)
    ]
    sends = bodies + bodies[::3]  # a third of them retried
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=service.url, limits=limits, timeout=60) as client:
        answers = await asyncio.gather(
            *(client.post("/webhooks/jte", content=b, headers=token_headers()) for b in sends)
        )
    assert {a.status_code for a in answers} == {200}
    assert Counter(a.json()["status"] for a in answers) == {"accepted": 300, "duplicate": 100}
    acknowledged = sorted(a.json()["position"] for a in answers if a.json()["status"] == "accepted")
    rows = stored_rows(database_url)
    assert [row["position"] for row in rows] == acknowledged
    assert len({row["delivery_id"] for row in rows}) == 300
    stats = service.app.state.writer.stats
    assert stats.deliveries == 400  # every send went through a batch
    assert stats.largest_batch > 1, "concurrent deliveries should share transactions"
    assert stats.batches < 400


async def test_duplicates_inside_one_batch_and_across_batches(writer: GroupCommitWriter) -> None:
    a, b = delivery(attendee_id="a"), delivery(attendee_id="b")
    # Submitted in one go, before the flusher runs: they form a single batch.
    first = await asyncio.gather(*(writer.submit(recorded(body)) for body in (a, b, a, a)))
    assert first[0] is not None and first[1] is not None
    assert first[2:] == [None, None]
    assert writer.stats.batches == 1
    later = await asyncio.gather(
        writer.submit(recorded(b)), writer.submit(recorded(delivery(attendee_id="c")))
    )
    assert later[0] is None and later[1] is not None and later[1] > max(first[0], first[1])


async def test_a_failing_delivery_does_not_fail_its_neighbours(
    writer: GroupCommitWriter, database_url: str
) -> None:
    good = [recorded(delivery(attendee_id=f"ok-{i}")) for i in range(7)]
    # A record the store cannot encode: stands in for any per-delivery failure.
    poison = dataclasses.replace(recorded(delivery(attendee_id="bad")), headers={"x": object()})  # type: ignore[dict-item]
    batch: list[DeliveryRecorded] = [*good[:3], poison, *good[3:]]
    results = await asyncio.gather(*(writer.submit(item) for item in batch), return_exceptions=True)
    assert isinstance(results[3], StoreUnavailable)
    positions = [r for i, r in enumerate(results) if i != 3]
    assert all(isinstance(p, int) for p in positions)
    stored = {row["body"] for row in stored_rows(database_url)}
    assert stored == {item.body for item in good}


async def test_full_queue_answers_503_with_retry_after_and_recovers(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service(queue_max=4, batch_max=2, store_timeout=20.0)
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        # Hold the events table lock from outside so that every batch waits on it.
        with psycopg.connect(database_url) as blocker:
            blocker.execute("LOCK TABLE rollcall.deliveries_events IN EXCLUSIVE MODE")
            posts = [
                asyncio.create_task(
                    client.post(
                        "/webhooks/jte",
                        content=delivery(attendee_id=f"q-{i}"),
                        headers=token_headers(),
                    )
                )
                for i in range(12)
            ]
            # At most 8 can be held (two batches of two in flight, four queued): the other
            # four must be refused while the store is still blocked.
            await until_true(lambda: sum(task.done() for task in posts) >= 4, 60)
            refused = [task.result() for task in posts if task.done()]
            for answer in refused:
                assert answer.status_code == 503
                assert answer.headers["retry-after"].isdigit()
            blocker.rollback()
        answers = await asyncio.gather(*posts)
    accepted = [a for a in answers if a.status_code == 200]
    # Memory is bounded: two batches of two in flight plus four queued; the rest were refused.
    assert 1 <= len(accepted) <= 8
    assert len(accepted) + len(refused) == 12
    assert len(stored_rows(database_url)) == len(accepted)


async def test_a_lone_delivery_is_not_held_back_waiting_for_company(
    start_service: Callable[..., RunningService],
) -> None:
    # A linger of an hour: were an idle service to wait for company, the store timeout (60 s)
    # would answer 503, or the client's (90 s) give up. No speed is measured here.
    service = start_service(batch_linger_ms=3_600_000.0, batch_max=100, store_timeout=60.0)
    async with httpx.AsyncClient(base_url=service.url, timeout=90) as client:
        answer = await client.post("/webhooks/jte", content=delivery(), headers=token_headers())
    assert (answer.status_code, answer.json()["status"]) == (200, "accepted")
    assert service.app.state.writer.stats.batch_sizes == {1: 1}


async def test_group_commit_can_be_switched_off(
    start_service: Callable[..., RunningService],
) -> None:
    service = start_service(group_commit=False)
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    "/webhooks/jte", content=delivery(attendee_id=f"s-{i}"), headers=token_headers()
                )
                for i in range(20)
            )
        )
    assert {a.json()["status"] for a in answers} == {"accepted"}
    stats = service.app.state.writer.stats
    assert (stats.batches, stats.largest_batch) == (20, 1)


async def test_stored_after_its_503_the_retry_is_answered_accepted(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the drill's outage scenario: a batch that committed after its deliveries had
    # been answered 503 (nothing stored) made their retries "duplicate".
    writer = GroupCommitWriter(store, batch_max=8, linger=0, queue_max=10, timeout=0.2, writers=1)
    writer.start()
    append = store.append
    answered, committed = threading.Event(), threading.Event()

    def slow_append(deliveries: list[DeliveryRecorded]) -> list[int | None]:
        # Commits only once the writer has answered 503: no sleep decides the order.
        assert answered.wait(60)
        positions = append(deliveries)
        committed.set()
        return positions

    monkeypatch.setattr(store, "append", slow_append)
    late = recorded(delivery(attendee_id="late"))
    try:
        with pytest.raises(StoreUnavailable):
            await writer.submit(late)
        answered.set()
        assert await asyncio.to_thread(committed.wait, 60)  # the batch commits after all
        await until_true(lambda: writer._in_flight == 0, 60)  # and its answers are settled
        monkeypatch.setattr(store, "append", append)
        position = await writer.submit(recorded(late.body))
        assert position == store.head()
        assert await writer.submit(recorded(late.body)) is None
    finally:
        await writer.close()
