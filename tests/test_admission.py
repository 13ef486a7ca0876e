"""What unauthenticated clients can hold: headers that condemn are answered before the body,
unverified bodies share a bounded memory and three quarters of the request slots, and idle
sockets never keep deliveries or health checks out. Against the real HTTP server."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from service.config import EventConfig
from tests.helpers import (
    SECRET,
    RunningService,
    delivery,
    hmac_headers,
    raw_exchange,
    stored_rows,
    token_headers,
    wait_until,
)

FAKE_SIGNATURE = b"X-Webhook-Signature: sha256=" + b"0" * 64


def head(*headers: bytes, length: int | None = None, path: bytes = b"/webhooks/jte") -> bytes:
    lines = [b"POST " + path + b" HTTP/1.1", b"Host: x", b"Content-Type: application/json"]
    lines += headers
    lines.append(
        b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked"
    )
    return b"\r\n".join(lines) + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("mode", "credentials", "reason"),
    [
        ("default", [], "no secret or signature header"),
        ("default", [b"X-Webhook-Secret: not the secret"], "secret does not match"),
        ("token", [b"Authorization: Bearer nope"], "secret does not match"),
        ("token", [FAKE_SIGNATURE], "no secret header"),
        ("hmac-sha256", [b"X-Webhook-Secret: " + SECRET.encode()], "no signature header"),
        ("standard-webhooks", [b"webhook-signature: v1,abc"], "missing webhook-id"),
        ("default", [b"X-Webhook-Signature: " + b"a," * 9], "more than 8 signatures"),
    ],
    ids=["nothing", "wrong-token", "wrong-bearer", "no-token", "no-signature", "no-id", "too-many"],
)
def test_headers_that_condemn_are_answered_before_the_body(
    start_service: Callable[..., RunningService],
    database_url: str,
    mode: str,
    credentials: list[bytes],
    reason: str,
) -> None:
    # Regression: the whole body was read before verification, even where the headers alone
    # decide. Here not a byte of the declared megabyte is sent, and the 401 comes anyway.
    event = EventConfig(slug="default", mode=mode, secrets=(SECRET,))  # type: ignore[arg-type]
    # On failure: no answer, then a close.
    service = start_service(events={"default": event}, header_timeout=3.0)
    received, _ = raw_exchange(service.url, head(*credentials, length=1_000_000))
    status, _, rest = received.partition(b"\r\n")
    assert status == b"HTTP/1.1 401 Unauthorized", received
    assert b"connection: close" in rest.lower()  # nobody will read the body: no keep-alive
    assert reason in rest.decode()
    assert stored_rows(database_url) == []


def test_headers_that_verify_are_answered_after_the_body(
    start_service: Callable[..., RunningService],
) -> None:
    # The other side of it: a token verifies from the headers, and the body is still read whole.
    token = EventConfig(slug="default", mode="token", secrets=(SECRET,))
    service = start_service(events={"default": token})
    body = delivery(delivery_id="token-verified")
    with httpx.Client(base_url=service.url) as client:
        answer = client.post("/webhooks/jte", content=body, headers=token_headers())
    assert answer.json()["status"] == "accepted"


@pytest.mark.parametrize(
    ("wire", "status"),
    [
        (head(length=500_000, path=b"/webhooks/jte/nowhere"), b"404"),
        (head(length=500_000).replace(b"application/json", b"text/plain"), b"415"),
    ],
    ids=["unknown-event", "not-json"],
)
def test_every_answer_before_the_body_closes_the_connection(
    service: RunningService, wire: bytes, status: bytes
) -> None:
    # Regression: these were answered with the connection kept alive, so the sender could go
    # on streaming a body nobody reads, holding the connection with no deadline at all.
    received, _ = raw_exchange(service.url, wire)
    assert received.startswith(b"HTTP/1.1 " + status)
    assert b"connection: close" in received.lower()


class Sender:
    """A raw connection that sends a head and part of a body, then holds on."""

    def __init__(self, url: str, wire: bytes) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.sendall(wire)

    def dropped(self) -> bool:
        """The server closed the connection without an answer."""
        self.sock.setblocking(False)
        try:
            return self.sock.recv(1) == b""
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@contextmanager
def senders() -> Iterator[list[Sender]]:
    opened: list[Sender] = []
    try:
        yield opened
    finally:
        for sender in opened:
            sender.close()


def hold(
    service: RunningService, opened: list[Sender], wire: bytes, until: Callable[[], bool]
) -> None:
    """Open one more sender, and wait until `until` says the server has dealt with it."""
    opened.append(Sender(service.url, wire))
    wait_until(until)


def in_progress(service: RunningService, count: int) -> Callable[[], bool]:
    return lambda: len(service.state.tasks) == count


def dropped_unverified(client: httpx.Client) -> int:
    metrics = client.get("/metrics").text
    found = re.search(r'rollcall_connections_dropped_total\{reason="unverified"\} (\d+)', metrics)
    return int(found.group(1)) if found else 0


@pytest.fixture
def settings_defaults() -> dict[str, object]:
    # Senders here hold on on purpose: the header deadline is not what these tests are about.
    return {"header_timeout": 60.0}


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "chunked"])
def test_unverified_bodies_share_a_bounded_memory(
    start_service: Callable[..., RunningService], declared: bool
) -> None:
    # Regression: every unverified body was held whole, without any bound across them: 60
    # unsigned 1 MiB bodies held open cost 50 MB. Here four 10 kB bodies fill the bound, and
    # each sender beyond it drops the one that has been arriving longest.
    service = start_service(body_limit=10_000, unverified_body_memory=40_000, body_timeout=60)
    wire = (
        head(FAKE_SIGNATURE, length=10_000) + b"x" * 9_999
        if declared
        else head(FAKE_SIGNATURE) + b"%x\r\n" % 10_000 + b"x" * 10_000 + b"\r\n"
    )
    with senders() as opened, httpx.Client(base_url=service.url, timeout=10) as client:
        counted = dropped_unverified(client)  # the counters are the test process's
        for count in range(1, 5):
            hold(service, opened, wire, in_progress(service, count))
        assert not any(s.dropped() for s in opened)
        hold(service, opened, wire, opened[0].dropped)
        hold(service, opened, wire, opened[1].dropped)
        assert [s.dropped() for s in opened] == [True, True, False, False, False, False]
        assert dropped_unverified(client) - counted == 2
        # A genuine delivery still gets in, in place of the oldest held body.
        body = delivery(delivery_id="genuine")
        answer = client.post("/webhooks/jte", content=body, headers=hmac_headers(body))
        assert answer.json()["status"] == "accepted"
        assert [s.dropped() for s in opened] == [True, True, True, False, False, False]


def test_slow_unverified_bodies_leave_room_for_health_and_verified_deliveries(
    start_service: Callable[..., RunningService],
) -> None:
    # Regression: slow senders with made-up signatures filled the connection cap, and every
    # request (health checks included) was answered 503. Of 8 slots they may hold 6.
    service = start_service(max_connections=8, body_timeout=60)
    wire = head(FAKE_SIGNATURE, length=1_000) + b"{"
    with senders() as opened, httpx.Client(base_url=service.url, timeout=10) as client:
        for count in range(1, 7):
            hold(service, opened, wire, in_progress(service, count))
        hold(service, opened, wire, opened[0].dropped)
        hold(service, opened, wire, opened[1].dropped)
        wait_until(in_progress(service, 6))
        assert client.get("/healthz").status_code == 200
        verified = delivery(delivery_id="by-token")
        answer = client.post("/webhooks/jte", content=verified, headers=token_headers())
        assert answer.json()["status"] == "accepted"
        signed = delivery(delivery_id="by-signature")
        answer = client.post("/webhooks/jte", content=signed, headers=hmac_headers(signed))
        assert answer.json()["status"] == "accepted"
        assert [s.dropped() for s in opened] == [True, True, True] + [False] * 5


def test_idle_sockets_at_the_cap_leave_room_for_deliveries_and_health(
    start_service: Callable[..., RunningService],
) -> None:
    # Regression: sixteen idle sockets with ROLLCALL_MAX_CONNECTIONS=16 made real deliveries
    # and /healthz answer 503 until the header deadline.
    service = start_service(max_connections=16)
    with senders() as idle:
        idle += [Sender(service.url, b"") for _ in range(16)]
        wait_until(lambda: len(service.state.connections) == 16)
        with httpx.Client(base_url=service.url, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            body = delivery(delivery_id="past-idle-sockets")
            answer = client.post("/webhooks/jte", content=body, headers=hmac_headers(body))
            assert answer.json()["status"] == "accepted"
            # Room was made by closing one idle socket, not by letting the number of
            # connections grow past the cap.
            wait_until(lambda: sum(s.dropped() for s in idle) == 1)
            assert len(service.state.connections) == 16
