"""Group commit: batching, duplicates, a failing delivery, backpressure, an idle service."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable

import httpx
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
    # 64 in flight at a time, as 64 senders would. Handed all 400 at once, httpx's pool spent
    # a tenth of the run re-assigning its queue.
    senders = asyncio.Semaphore(64)
    async with httpx.AsyncClient(base_url=service.url, limits=limits, timeout=60) as client:

        async def send(body: bytes) -> httpx.Response:
            async with senders:
                return await _post_as_a_sender_would(client, body)

        answers = await asyncio.gather(*(send(b) for b in sends))
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


async def _post_as_a_sender_would(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    """Post a delivery, sending it again if its kept-alive connection was closed under it.

    A post sent on a connection as the server closes it for idling fails with a ReadError, a
    race HTTP/1.1 leaves to the sender, which sends again. CI hit it when the keep-alive was
    5 s: this test's client, sharing a process with the server on a loaded VM, read some
    answers more than 5 s after they were sent (reproduced three runs of three with a
    keep-alive of 0.1 s). Such a post never reached the app: were one stored and its answer
    lost, its resend would be a duplicate, and the counts below would catch it."""
    for attempt in range(3):
        try:
            return await client.post("/webhooks/jte", content=body, headers=token_headers())
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


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
    start_service: Callable[..., RunningService],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = start_service(queue_max=4, batch_max=2, batch_writers=2, store_timeout=120.0)
    writer: GroupCommitWriter = service.app.state.writer
    store: DeliveryStore = service.app.state.store
    append = store.append
    release = threading.Event()
    appending: list[int] = []  # the size of each batch that reached the store

    def held_append(deliveries: list[DeliveryRecorded]) -> list[int | None]:
        # Every batch waits here until the test lets go: no timing decides who is held.
        appending.append(len(deliveries))
        assert release.wait(120)
        return append(deliveries)

    monkeypatch.setattr(store, "append", held_append)
    bodies = [delivery(attendee_id=f"q-{i}") for i in range(10)]
    async with httpx.AsyncClient(base_url=service.url, timeout=120) as client:

        def post(body: bytes) -> asyncio.Task[httpx.Response]:
            return asyncio.create_task(
                client.post("/webhooks/jte", content=body, headers=token_headers())
            )

        try:
            # One at a time, each until it is held: both writers take a batch of one and block in
            # the store, the next four fill the queue (queue_max=4).
            held: list[asyncio.Task[httpx.Response]] = []
            for body in bodies[:6]:
                held.append(post(body))
                await until_true(lambda: sum(appending) + writer.depth == len(held), 60)
            assert (appending, writer.depth) == ([1, 1], 4)
            # The queue is provably full and nothing has committed: the rest are refused at once.
            refused = await asyncio.gather(*(post(body) for body in bodies[6:]))
            assert not any(task.done() for task in held)
            assert stored_rows(database_url) == []
        finally:
            release.set()  # a failed check must not leave the store's threads blocked
        accepted = await asyncio.gather(*held)
        # Recovered: with the queue drained, a new delivery is accepted.
        later = await client.post(
            "/webhooks/jte", content=delivery(attendee_id="q-later"), headers=token_headers()
        )
    for answer in refused:
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == str(service.settings.retry_after_seconds)
        assert answer.json() == {
            "error": "unavailable",
            "message": "the event store is unavailable; retry later",
        }
    assert [(a.status_code, a.json()["status"]) for a in accepted] == [(200, "accepted")] * 6
    assert (later.status_code, later.json()["status"]) == (200, "accepted")
    stored = [row["body"] for row in stored_rows(database_url)]
    assert sorted(stored) == sorted([*bodies[:6], delivery(attendee_id="q-later")])


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
