"""Every row of DESIGN.md's "Responses at intake", against the real HTTP server and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import httpx
import psycopg
import pytest
from psycopg import sql
from standardwebhooks import Webhook

from service.config import DEFAULT_HEADER_LIMIT, EventConfig, Tuning
from tests.helpers import (
    SECRET,
    RunningService,
    answers_then_idle,
    bearer_headers,
    delivery,
    hmac_base64,
    hmac_headers,
    jte_headers,
    raw_exchange,
    stored_rows,
    token_headers,
    until,
)


@pytest.fixture
async def client(service: RunningService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        yield client


async def test_accepted_then_duplicate(client: httpx.AsyncClient, database_url: str) -> None:
    body = delivery(delivery_id="d-1", occurredAt="2026-05-14T09:12:03Z")
    first = await client.post("/webhooks/jte", content=body, headers=token_headers())
    assert first.status_code == 200
    assert first.json() == {"status": "accepted", "position": first.json()["position"]}
    assert isinstance(first.json()["position"], int)
    again = await client.post("/webhooks/jte", content=body, headers=hmac_headers(body))
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})

    (row,) = stored_rows(database_url)
    assert row["position"] == first.json()["position"]
    assert row["body"] == body
    assert row["slug"] == "default"
    assert row["event_type"] == "AttendeeRegistered"
    assert row["attendee_id"] == "a-1"
    assert row["delivery_id"] == "d-1"
    assert row["occurred_at"].startswith("2026-05-14T09:12:03")
    assert row["verified_by"] == "token"
    assert row["quarantine_reason"] is None
    received = datetime.fromisoformat(row["timestamp"])
    assert abs((datetime.now(UTC) - received).total_seconds()) < 60


async def test_same_delivery_id_with_a_different_body_is_a_duplicate(
    client: httpx.AsyncClient,
) -> None:
    first = delivery(delivery_id="retry-1")
    retried = delivery(delivery_id="retry-1", note="JTE changed a field on retry")
    assert (await client.post("/webhooks/jte", content=first, headers=token_headers())).json()[
        "status"
    ] == "accepted"
    answer = await client.post("/webhooks/jte", content=retried, headers=token_headers())
    assert answer.json() == {"status": "duplicate"}


async def test_without_delivery_id_the_exact_body_is_the_identity(
    client: httpx.AsyncClient,
) -> None:
    body = delivery()
    other = delivery(attendee_id="a-2")
    assert (await client.post("/webhooks/jte", content=body, headers=token_headers())).json()[
        "status"
    ] == "accepted"
    assert (await client.post("/webhooks/jte", content=other, headers=token_headers())).json()[
        "status"
    ] == "accepted"
    assert (await client.post("/webhooks/jte", content=body, headers=token_headers())).json()[
        "status"
    ] == "duplicate"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"event": "AttendeeRegistered", "attendee": {"id": ', "not valid JSON"),
        (b'{"event": "AttendeeBeamedUp", "attendee": {"id": "a-1"}}', "unknown event type"),
        (
            b'{"event": "AttendeeRegistered", "attendee": {"email": "x@example.com"}}',
            "no attendee id",
        ),
        (b"\xff\xfe not utf-8", "not valid JSON"),
    ],
)
async def test_verified_but_unreadable_is_quarantined_with_its_bytes(
    client: httpx.AsyncClient, database_url: str, body: bytes, reason: str
) -> None:
    answer = await client.post("/webhooks/jte", content=body, headers=hmac_headers(body))
    assert (answer.status_code, answer.json()) == (202, {"status": "quarantined"})
    (row,) = stored_rows(database_url)
    assert row["body"] == body
    assert reason in row["quarantine_reason"]
    assert row["event_type"] is None
    again = await client.post("/webhooks/jte", content=body, headers=hmac_headers(body))
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})


@pytest.mark.parametrize(
    "headers",
    [
        jte_headers({}),
        token_headers("not the secret"),
        hmac_headers(b"a different body"),
        bearer_headers("nope"),
    ],
    ids=["missing", "wrong-token", "wrong-signature", "wrong-bearer"],
)
async def test_unauthenticated_is_401_and_nothing_is_stored(
    client: httpx.AsyncClient, database_url: str, headers: httpx.Headers
) -> None:
    answer = await client.post("/webhooks/jte", content=delivery(), headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthorized"
    assert SECRET not in answer.text
    assert stored_rows(database_url) == []


async def test_every_accepted_form_of_the_secret(client: httpx.AsyncClient) -> None:
    forms = [
        (delivery(attendee_id="t"), token_headers()),
        (delivery(attendee_id="b"), bearer_headers()),
        (delivery(attendee_id="h"), hmac_headers(delivery(attendee_id="h"))),
        (delivery(attendee_id="p"), hmac_headers(delivery(attendee_id="p"), prefix="")),
        (
            delivery(attendee_id="64"),
            jte_headers({"x-webhook-signature": hmac_base64(delivery(attendee_id="64"))}),
        ),
    ]
    for body, headers in forms:
        answer = await client.post("/webhooks/jte", content=body, headers=headers)
        assert answer.json()["status"] == "accepted", headers


async def test_unknown_event_slug_is_404(client: httpx.AsyncClient, database_url: str) -> None:
    answer = await client.post(
        "/webhooks/jte/no-such-conf", content=delivery(), headers=token_headers()
    )
    assert answer.status_code == 404
    assert answer.json()["error"] == "unknown_event"
    assert stored_rows(database_url) == []


TOO_LARGE = {"error": "body_too_large", "message": "the body is over the 1000-byte limit"}


async def test_over_the_limit_is_413_by_declared_length(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service(body_limit=1000)
    big = b'{"event":"AttendeeRegistered","attendee":{"id":"a","pad":"' + b"x" * 2000 + b'"}}'
    async with httpx.AsyncClient(base_url=service.url) as client:
        answer = await client.post("/webhooks/jte", content=big, headers=token_headers())
        assert (answer.status_code, answer.json()) == (413, TOO_LARGE)
        assert stored_rows(database_url) == []
        small = await client.post("/webhooks/jte", content=delivery(), headers=token_headers())
        assert small.json()["status"] == "accepted"


async def test_over_the_limit_is_413_when_streamed_without_length(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service(body_limit=1000)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(50):
            yield b"x" * 100

    async with httpx.AsyncClient(base_url=service.url) as client:
        answer = await client.post("/webhooks/jte", content=chunks(), headers=token_headers())
    assert (answer.status_code, answer.json()) == (413, TOO_LARGE)
    assert stored_rows(database_url) == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_not_json_content_type_is_415(
    client: httpx.AsyncClient, database_url: str, content_type: str | None
) -> None:
    headers = token_headers()
    del headers["content-type"]
    if content_type:
        headers["content-type"] = content_type
    answer = await client.post("/webhooks/jte", content=delivery(), headers=headers)
    assert (answer.status_code, answer.json()) == (
        415,
        {"error": "unsupported_media_type", "message": "the body must be application/json"},
    )
    assert stored_rows(database_url) == []


async def test_json_content_type_variants_are_accepted(client: httpx.AsyncClient) -> None:
    for i, content_type in enumerate(
        ["application/json; charset=utf-8", "Application/JSON", "application/vnd.jte+json"]
    ):
        headers = token_headers()
        headers["content-type"] = content_type
        answer = await client.post(
            "/webhooks/jte", content=delivery(attendee_id=f"c{i}"), headers=headers
        )
        assert answer.json()["status"] == "accepted", content_type


async def test_database_unavailable_is_503_with_retry_after_then_recovers(
    start_service: Callable[..., RunningService], database_url: str, server_url: str
) -> None:
    service = start_service(store_timeout=2.0)
    name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        assert (
            await client.post(
                "/webhooks/jte", content=delivery("AttendeeCheckedIn"), headers=token_headers()
            )
        ).status_code == 200
        _set_connections(server_url, str(name), allowed=False)
        try:
            answer = await client.post(
                "/webhooks/jte", content=delivery(attendee_id="during"), headers=token_headers()
            )
            assert (answer.status_code, answer.json()) == (
                503,
                {"error": "unavailable", "message": "the event store is unavailable; retry later"},
            )
            assert answer.headers["retry-after"] == str(service.settings.retry_after_seconds)
            assert (await client.get("/readyz")).status_code == 503
        finally:
            _set_connections(server_url, str(name), allowed=True)
        # JTE retries until it is answered: wait for that (a liveness bound, not a speed bound).
        answers = []

        async def retried() -> bool:
            answers.append(
                await client.post(
                    "/webhooks/jte", content=delivery(attendee_id="during"), headers=token_headers()
                )
            )
            return answers[-1].status_code != 503

        await until(retried, 60)
        assert answers[-1].json()["status"] == "accepted"
    assert [row["attendee_id"] for row in stored_rows(database_url)] == ["a-1", "during"]


def _set_connections(server_url: str, name: str, *, allowed: bool) -> None:
    """Simulate a database outage for one database without stopping the shared server."""
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


async def test_stored_headers_are_allow_listed_and_never_carry_secrets(
    client: httpx.AsyncClient, database_url: str
) -> None:
    body = delivery()
    headers = hmac_headers(body)
    headers["x-webhook-secret"] = SECRET
    headers["user-agent"] = "JTE-Panel/1.0"
    headers["x-request-id"] = "req-7"
    headers["cookie"] = "session=abc"
    headers["x-custom-noise"] = "dropped"
    assert (await client.post("/webhooks/jte", content=body, headers=headers)).status_code == 200
    (row,) = stored_rows(database_url)
    stored = row["headers"]
    assert stored["user-agent"] == "JTE-Panel/1.0"
    assert stored["x-request-id"] == "req-7"
    assert stored["content-type"] == "application/json"
    for name in (
        "x-webhook-secret",
        "x-webhook-signature",
        "cookie",
        "x-custom-noise",
        "authorization",
    ):
        assert name not in stored
    raw_state = repr(row)
    assert SECRET not in raw_state


async def test_standard_webhooks_sender_end_to_end(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    secret = "whsec_" + base64.b64encode(b"standard-webhooks-test-key-0001").decode()
    events = {"spring": EventConfig(slug="spring", mode="standard-webhooks", secrets=(secret,))}
    service = start_service(events=events)
    body = delivery("AttendeeCheckedIn")
    sender = Webhook(secret)

    def headers(msg_id: str, at: datetime) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": sender.sign(msg_id, at, body.decode()),
        }

    async with httpx.AsyncClient(base_url=service.url) as client:
        now = datetime.now(UTC)
        first = await client.post(
            "/webhooks/jte/spring", content=body, headers=headers("msg_1", now)
        )
        assert first.json()["status"] == "accepted"
        retry = await client.post(
            "/webhooks/jte/spring", content=body, headers=headers("msg_1", datetime.now(UTC))
        )
        assert retry.json() == {"status": "duplicate"}
        stale = datetime.fromtimestamp(now.timestamp() - 600, tz=UTC)
        old = await client.post(
            "/webhooks/jte/spring", content=body, headers=headers("msg_2", stale)
        )
        assert old.status_code == 401
        tampered = await client.post(
            "/webhooks/jte/spring",
            content=body.replace(b"a-1", b"a-9"),
            headers=headers("msg_3", now),
        )
        assert tampered.status_code == 401
        default = await client.post("/webhooks/jte", content=body, headers=token_headers())
        assert default.status_code == 404
    (row,) = stored_rows(database_url)
    assert row["delivery_id"] == "msg_1"
    assert row["headers"]["webhook-id"] == "msg_1"
    assert "webhook-signature" not in row["headers"]


async def test_hundred_concurrent_posts_of_fifty_deliveries_store_fifty(
    client: httpx.AsyncClient, database_url: str
) -> None:
    bodies = [
        delivery("AttendeeCheckedIn", attendee_id=f"a-{i}", delivery_id=f"d-{i}") for i in range(50)
    ]
    posts = [
        client.post("/webhooks/jte", content=body, headers=token_headers()) for body in bodies * 2
    ]
    answers = await asyncio.gather(*posts)
    assert {answer.status_code for answer in answers} == {200}
    statuses = Counter(answer.json()["status"] for answer in answers)
    assert statuses == {"accepted": 50, "duplicate": 50}
    rows = stored_rows(database_url)
    assert len(rows) == 50
    assert sorted(row["delivery_id"] for row in rows) == sorted(f"d-{i}" for i in range(50))
    positions = [
        answer.json()["position"] for answer in answers if answer.json()["status"] == "accepted"
    ]
    assert sorted(positions) == [row["position"] for row in rows]


async def test_wrong_method_and_unknown_path_answer_json(client: httpx.AsyncClient) -> None:
    assert (await client.get("/webhooks/jte")).status_code == 405
    missing = await client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready", "database": "ok"}


async def test_out_of_range_occurrence_time_is_accepted_without_one(
    client: httpx.AsyncClient, database_url: str
) -> None:
    # Regression (found by `scripts/drill hostile`): converting the time to UTC overflowed
    # and a verified delivery was answered 503.
    body = delivery(delivery_id="d-late", occurredAt="0001-01-01T00:00:00+14:00")
    answer = await client.post("/webhooks/jte", content=body, headers=hmac_headers(body))
    assert answer.status_code == 200 and answer.json()["status"] == "accepted"
    assert stored_rows(database_url)[0]["occurred_at"] is None


async def test_headers_over_the_limit_are_431_and_nothing_is_stored(
    service: RunningService, database_url: str
) -> None:
    # Regression (found by `scripts/drill hostile`): headers of any size were buffered (and
    # a 1 MB one accepted), so a sender could grow the process by whatever it sent.
    body = delivery(delivery_id="d-huge")
    signature = dict(hmac_headers(body))["x-webhook-signature"].encode()
    head = (
        b"POST /webhooks/jte HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Webhook-Signature: " + signature + b"\r\nContent-Length: %d\r\n" % len(body)
    )
    padding = b"X-Padding: " + b"p" * (DEFAULT_HEADER_LIMIT + 1) + b"\r\n"
    received, _ = await asyncio.to_thread(
        raw_exchange, service.url, head + padding + b"\r\n" + body
    )
    assert received.startswith(b"HTTP/1.1 431 ")
    assert b'"error":"headers_too_large"' in received
    # Many small headers count the same; and just under the limit is fine.
    many = b"".join(b"X-P%d: pppp\r\n" % i for i in range(DEFAULT_HEADER_LIMIT // 10))
    received, _ = await asyncio.to_thread(raw_exchange, service.url, head + many + b"\r\n" + body)
    assert received.startswith(b"HTTP/1.1 431 ")
    assert stored_rows(database_url) == []
    fits = b"X-Padding: " + b"p" * (DEFAULT_HEADER_LIMIT - len(head) - 100) + b"\r\n"
    # Asked to close after its answer: raw_exchange reads until the server closes.
    wire = head + b"Connection: close\r\n" + fits + b"\r\n" + body
    received, _ = await asyncio.to_thread(raw_exchange, service.url, wire)
    assert received.startswith(b"HTTP/1.1 200 ") and b'"accepted"' in received


async def test_a_kept_alive_connection_serves_while_idle_then_closes_at_its_keep_alive(
    start_service: Callable[..., RunningService],
    database_url: str,
) -> None:
    # The default outlasts the idle timeouts of the proxies put in front (Caddy's is 120 s): a
    # proxy that reuses a connection as the server closes it fails that delivery.
    assert Tuning().keep_alive > 120
    service = start_service(keep_alive=2)
    posts = [_wire(delivery(attendee_id=f"kept-{n}")) for n in range(2)]
    # Half a second idle between the two posts, within the keep-alive: one connection serves both.
    answers, closed_after = await asyncio.to_thread(answers_then_idle, service.url, posts, 0.5)
    assert [a.split(b" ", 2)[1] for a in answers] == [b"200", b"200"]
    assert 1.0 < closed_after < 4.5  # 2 s, and room for a loaded machine
    assert len(stored_rows(database_url)) == 2


def _wire(body: bytes) -> bytes:
    head = "".join(f"{name}: {value}\r\n" for name, value in token_headers().items())
    return (
        b"POST /webhooks/jte HTTP/1.1\r\nHost: x\r\n"
        + head.encode()
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def test_a_body_that_never_starts_is_cut_off_at_the_header_deadline(
    start_service: Callable[..., RunningService],
    database_url: str,
) -> None:
    # Regression (found by `scripts/drill hostile`): intake's body deadline starts with the
    # body's first chunk, so headers followed by nothing held the connection forever.
    # Deadlines of 2 s: short for the test, long enough that a loaded machine never cuts off
    # the headers it sends at once.
    service = start_service(body_timeout=2.0, header_timeout=2.0)
    # A signature, however wrong, makes the body necessary (a wrong token would be refused
    # from the headers alone, before any body).
    head = (
        b"POST /webhooks/jte HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Webhook-Signature: sha256=00\r\nContent-Length: 100\r\n\r\n"
    )
    # Closed with nothing said; were it held open, raw_exchange's 30 s socket timeout fails.
    received, _ = await asyncio.to_thread(raw_exchange, service.url, head, 30)
    assert received == b""
    # A body that has begun is the body deadline's: 408 from intake, not a silent close.
    body = delivery()
    slow = (
        b"POST /webhooks/jte HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Webhook-Signature: sha256=00\r\nContent-Length: %d\r\n\r\n" % (len(body) + 10)
    ) + body
    received, _ = await asyncio.to_thread(raw_exchange, service.url, slow)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert stored_rows(database_url) == []
