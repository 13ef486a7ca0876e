"""The delivery log over the real server: every outcome in one list (stored deliveries,
duplicates, each kind of refusal), header names and never values, keyset pages, one delivery's
detail, and a refusal log that stays bounded under 100k entries."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest

from service import intake_log
from service.intake_log import IntakeLog, shape
from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import (
    SECRET,
    RunningService,
    api_token,
    bearer,
    delivery,
    jte_headers,
    token_headers,
    wait_until,
)

SIGNATURE_SECRET = "jte-side secret 7d1f"


def log_items(client: httpx.Client, query: str = "") -> list[dict[str, Any]]:
    answer = client.get(f"/v1/deliveries{query}")
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def raw(url: str, wire: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(wire)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.fixture
def settings_defaults() -> dict[str, object]:
    return {"body_limit": 2000, "header_limit": 4096, "body_timeout": 0.5}


def send_everything(url: str) -> dict[str, str]:
    """One delivery of each outcome; what each request was, by what the log should say."""
    body = delivery(attendee_id="a-7", delivery_id="d-7")
    signed = delivery(attendee_id="a-8")
    signature = hmac.new(SIGNATURE_SECRET.encode(), signed, hashlib.sha256).hexdigest()
    with httpx.Client(base_url=url, timeout=10) as sender:
        assert (
            sender.post("/webhooks/jte", content=body, headers=token_headers()).status_code == 200
        )
        assert (
            sender.post("/webhooks/jte", content=body, headers=token_headers()).status_code == 200
        )
        quarantined = b'{"event": "SomethingNew", "attendee": {"id": "a-9"}}'
        answer = sender.post("/webhooks/jte", content=quarantined, headers=token_headers())
        assert answer.status_code == 202
        wrong = sender.post("/webhooks/jte", content=body, headers=token_headers("not it"))
        assert wrong.status_code == 401
        unknown_header = jte_headers({"x-jte-signature": signature})
        unknown = sender.post("/webhooks/jte", content=signed, headers=unknown_header)
        assert unknown.status_code == 401
        assert sender.post("/webhooks/jte/nope", content=body).status_code == 404
        plain = token_headers()
        plain["content-type"] = "text/plain"
        assert sender.post("/webhooks/jte", content=body, headers=plain).status_code == 415
        big = b'{"pad": "' + b"x" * 3000 + b'"}'
        assert sender.post("/webhooks/jte", content=big, headers=token_headers()).status_code == 413
    huge = b"POST /webhooks/jte HTTP/1.1\r\nhost: x\r\nx-pad: " + b"p" * 5000 + b"\r\n\r\n"
    assert raw(url, huge).startswith(b"HTTP/1.1 431")
    stalled = (
        b"POST /webhooks/jte HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"x-webhook-secret: " + SECRET.encode("utf-8") + b'\r\ncontent-length: 50\r\n\r\n{"a"'
    )
    assert raw(url, stalled).startswith(b"HTTP/1.1 408")
    return {"signature": signature}


def test_every_outcome_in_one_log_with_names_never_values(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service()
    sent = send_everything(service.url)
    wait_until_caught_up(database_url)
    admin = bearer(api_token(database_url, "admin"))
    with httpx.Client(base_url=service.url, timeout=10, headers=admin) as client:
        wait_until(lambda: len(log_items(client)) >= 10, timeout=20)
        answer = client.get("/v1/deliveries")
        items = answer.json()["items"]
        # Values never reach the log: not the token, not the signature, not the padding.
        for secret in (SECRET, "not it", sent["signature"], "p" * 100):
            assert secret not in answer.text
        outcomes = sorted((i["outcome"], i["status"], i["reason"]) for i in items)
        assert outcomes == sorted(
            [
                ("accepted", 200, None),
                ("duplicate", 200, "duplicate"),
                ("quarantined", 202, "unknown event type: SomethingNew"),
                ("rejected", 401, "secret_mismatch"),
                ("rejected", 401, "no_credentials"),
                ("rejected", 404, "unknown_event"),
                ("rejected", 415, "unsupported_media_type"),
                ("rejected", 413, "body_too_large"),
                ("rejected", 431, "headers_too_large"),
                ("rejected", 408, "body_timeout"),
            ]
        )
        times = [i["received_at"] for i in items]
        assert times == sorted(times, reverse=True)
        unknown = next(i for i in items if i["reason"] == "no_credentials")
        assert "x-jte-signature" in unknown["headers"]
        assert unknown["shapes"]["x-jte-signature"] == "hex:64"
        assert unknown["peer"] == "127.0.0.1"
        assert unknown["path"] == "/webhooks/jte"
        duplicate = next(i for i in items if i["outcome"] == "duplicate")
        accepted = next(i for i in items if i["outcome"] == "accepted")
        assert duplicate["key"] == accepted["key"]

        # Keyset pages of 3 give the same items, once each, in the same order.
        paged, query = [], "?limit=3"
        while True:
            page = client.get(f"/v1/deliveries{query}").json()
            paged += page["items"]
            if page["next_cursor"] is None:
                break
            query = f"?limit=3&cursor={page['next_cursor']}"
        assert paged == items

        # Filters.
        refused = log_items(client, "?outcome=rejected")
        assert len(refused) == 7 and all(i["status"] >= 400 for i in refused)
        assert [i["event"] for i in log_items(client, "?event=other")].count("other") == 2
        assert [i["attendee_id"] for i in log_items(client, "?attendee=a-7")] == ["a-7"]
        assert log_items(client, "?from=2999-01-01T00:00:00Z") == []
        assert len(log_items(client, f"?to={items[-1]['received_at']}")) == 0
        assert client.get("/v1/deliveries?outcome=lost").status_code == 400
        assert client.get("/v1/deliveries?cursor=abc").status_code == 400

        # One delivery in detail: kept headers (no secret), body, reading, views applied.
        detail = client.get(f"/v1/deliveries/{accepted['key']}").json()
        assert detail["attendee_id"] == "a-7"
        assert json.loads(detail["body"])["attendee"]["id"] == "a-7"
        assert "x-webhook-secret" not in detail["headers"]
        assert {v["view"]: v["state"] for v in detail["views"]} == {
            "roster": "applied",
            "occupancy": "applied",
            "payments": "applied",
            "occurrences": "applied",
            "roster_history": "applied",
        }
        held = next(i for i in items if i["outcome"] == "quarantined")
        states = {v["state"] for v in client.get(f"/v1/deliveries/{held['key']}").json()["views"]}
        assert states == {"skipped"}
        missing = client.get("/v1/deliveries/00000000-0000-0000-0000-000000000000")
        assert missing.status_code == 404
        assert client.get("/v1/deliveries/not-a-key").status_code == 404
    # The read scope is not enough: bodies and headers are for admins.
    reader = bearer(api_token(database_url, "read"))
    assert httpx.get(service.url + "/v1/deliveries", headers=reader).status_code == 403


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"a" * 64, "hex:64"),
        (b"sha256=" + b"0f" * 32, "sha256=hex:64"),
        (b"v1,c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmE=", "v1,base64:44"),
        (b"1764500000", "digits:10"),
        (b"Bearer abc.def", "bearer text:7"),
        (b"v1,AAAZ v1,BBBZ", "v1,base64:4 x2"),
        (b"hello world!", "base64:5 x2"),
        (b"a.b:c", "text:5"),
    ],
)
def test_shapes_say_alphabet_and_length_only(value: bytes, expected: str) -> None:
    assert shape(value) == expected


async def test_the_log_stays_bounded_under_100k_refusals(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        intake_log.ensure_table(conn)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    log = IntakeLog()
    try:
        log.start(pool)
        headers = {"x-attack": b"z" * 100, "content-type": b"application/json"}
        for n in range(100_000):
            log.record(
                outcome="rejected",
                status=401,
                reason="no_credentials",
                event="other",
                path=f"/webhooks/jte/{n}",
                body_size=n,
                headers=headers,
                peer="203.0.113.9",
            )
            if n % 2000 == 1999:
                await log.flush()
        dropped_before = intake_log.UNLOGGED._value.get()
        for _ in range(intake_log._BUFFER + 5):  # a burst faster than the writes: dropped
            log.record(
                outcome="rejected", status=404, reason="unknown_event", event="other",
                path="/x", body_size=None, headers={}, peer=None,
            )  # fmt: skip
        assert intake_log.UNLOGGED._value.get() - dropped_before == 5
        await log.flush()
        # A storm of duplicates has slots of its own: the refusals stay.
        for n in range(intake_log.DUPLICATE_ROWS + 100):
            log.record(
                outcome="duplicate", status=200, reason="duplicate", event="other",
                path="/webhooks/jte", body_size=None, headers={}, peer=None,
            )  # fmt: skip
            if n % 1000 == 999:
                await log.flush()
    finally:
        await log.stop()
        await pool.close()
    with psycopg.connect(database_url) as conn:
        rows, lowest, highest = conn.execute(
            "SELECT count(*), min(id), max(id) FROM rollcall.intake_log WHERE outcome = 'rejected'"
        ).fetchone()  # type: ignore[misc]
        duplicates = conn.execute(
            "SELECT count(*) FROM rollcall.intake_log WHERE outcome = 'duplicate'"
        ).fetchone()[0]  # type: ignore[index]
        newest = intake_log.read(conn, limit=1, outcome="rejected", event="other")[0]
    assert rows == intake_log.LOG_ROWS
    assert duplicates == intake_log.DUPLICATE_ROWS
    assert highest - lowest == intake_log.LOG_ROWS - 1  # the newest refusals, none missing
    assert newest.reason == "unknown_event"
