"""service/jte/sender.py: sending simulated days to the real service like JTE does (concurrently,
with retries) and what the store then holds; retries, lost answers and giving up against a scripted
stand-in; what goes on the wire."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest

from domain.interpret import Unreadable, interpret
from service.config import EventConfig
from service.jte.sender import Report, post_all, summary
from service.jte.simulator import SignedDelivery, SimulationOptions, sign_all, simulate
from tests.helpers import SECRET, RunningService, stored_rows

NOISY = SimulationOptions(
    seed=5, duplicates=0.1, out_of_order=0.2, bad_signatures=0.05, malformed=0.05
)
TOKEN = EventConfig(slug="default", mode="token", secrets=(SECRET,))


# --- sending to the real service ---------------------------------------------------------


async def test_a_noisy_day_sent_concurrently(service: RunningService, database_url: str) -> None:
    options = SimulationOptions(seed=11, attendees=60, duplicates=0.1, out_of_order=0.2)
    deliveries = simulate(msgspec.structs.replace(options, bad_signatures=0.05, malformed=0.05))
    signed = sign_all(deliveries, service.settings.events["default"], now=time.time())
    report = await post_all(service.url, signed, concurrency=8)

    assert report.unexpected == 0 and report.no_answer == 0, report.outcomes
    assert report.sent == len(deliveries)
    accepted_per_id: Counter[str] = Counter()
    for delivery, outcome in zip(deliveries, report.outcomes, strict=True):
        assert outcome.delivery_id == delivery.delivery_id
        if delivery.forged:
            assert (outcome.http_status, outcome.answer) == (401, "unauthorized")
        elif delivery.expect == "quarantined":
            assert (outcome.http_status, outcome.answer) == (202, "quarantined")
        else:
            assert outcome.http_status == 200 and outcome.answer in ("accepted", "duplicate")
            accepted_per_id[delivery.delivery_id] += outcome.answer == "accepted"
    assert set(accepted_per_id.values()) == {1}

    rows = stored_rows(database_url)
    genuine = {d.delivery_id: d for d in deliveries if not d.forged}
    assert len(rows) == len(genuine)
    assert sorted(r["body"] for r in rows) == sorted(d.body for d in genuine.values())
    unparsable = {i for i, d in genuine.items() if "not valid JSON" in _reason(d.body)}
    assert unparsable and [r["delivery_id"] for r in rows].count(None) == len(unparsable)
    assert {r["delivery_id"] for r in rows} - {None} == set(genuine) - unparsable
    positions = {a.position for a in report.acknowledged if a.position is not None}
    assert positions == {r["position"] for r in rows if r["quarantine_reason"] is None}
    assert report.http_statuses == dict(Counter(o.http_status for o in report.outcomes))
    assert report.statuses["accepted"] == len(positions)


def _reason(body: bytes) -> str:
    reading = interpret(body)
    return reading.reason if isinstance(reading, Unreadable) else ""


async def test_sent_one_by_one_every_answer_is_as_expected(service: RunningService) -> None:
    deliveries = simulate(msgspec.structs.replace(NOISY, seed=12, attendees=15))
    signed = sign_all(deliveries, service.settings.events["default"], now=time.time())
    report = await post_all(service.url, signed, concurrency=1)
    assert [o.answer for o in report.outcomes] == [d.expect for d in deliveries]
    assert report.unexpected == 0
    # The same deliveries again: all duplicates, which a run that expected them new reports.
    again = await post_all(service.url, signed, concurrency=8)
    new = sum(d.expect == "accepted" for d in deliveries)
    assert again.statuses.get("accepted", 0) == 0
    assert again.unexpected == new + sum(d.expect == "quarantined" for d in deliveries)


# --- retries, lost answers, giving up ----------------------------------------------------------


class ScriptedServer:
    """A stand-in for rollcall answering from a script: "503", "drop" (close without an answer),
    "store-drop" (store, then close), "silent" (never answer), else store and answer
    accepted/duplicate. Keeps each request's head (request line and headers) as sent."""

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.stored: list[bytes] = []
        self.heads: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                self.heads.append(head)
                if not self._answer(writer, body):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    def _answer(self, writer: asyncio.StreamWriter, body: bytes) -> bool:
        action = self.script.pop(0) if self.script else "store"
        if action == "503":
            self._write(writer, 503, {"error": "unavailable"}, b"retry-after: 0\r\n")
            return True
        if action == "silent":
            return True  # until the sender gives up on this connection
        if action in ("store", "store-drop") and body not in self.stored:
            self.stored.append(body)
            if action == "store-drop":
                return False
            self._write(writer, 200, {"status": "accepted", "position": len(self.stored)})
            return True
        if action == "drop":
            return False
        self._write(writer, 200, {"status": "duplicate"})
        return True

    @staticmethod
    def _write(
        writer: asyncio.StreamWriter, status: int, content: object, extra: bytes = b""
    ) -> None:
        payload = json.dumps(content).encode()
        head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
        head += f"content-length: {len(payload)}\r\n"
        writer.write(head.encode() + extra + b"\r\n" + payload)


Start = Callable[[list[str]], Awaitable[tuple[str, ScriptedServer]]]


@pytest.fixture
async def scripted() -> AsyncIterator[Start]:
    servers: list[asyncio.Server] = []

    async def start(script: list[str]) -> tuple[str, ScriptedServer]:
        fake = ScriptedServer(script)
        server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}", fake

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def three_deliveries(event: EventConfig = TOKEN) -> list[SignedDelivery]:
    return sign_all(simulate(SimulationOptions(attendees=1))[:3], event, now=0)


async def test_not_acknowledged_is_retried_until_answered(scripted: Start) -> None:
    url, fake = await scripted(["503", "drop", "store", "store-drop", "store", "store"])
    signed = three_deliveries()
    report = await post_all(url, signed, concurrency=1)
    assert [(o.answer, o.attempts) for o in report.outcomes] == [
        ("accepted", 3),
        ("duplicate", 2),  # its first answer was lost after it was stored
        ("accepted", 1),
    ]
    assert [o.uncertain for o in report.outcomes] == [True, True, False]
    assert report.retries == 3 and report.unexpected == 0 and len(fake.heads) == 6
    assert len(fake.stored) == 3 and [a.position for a in report.acknowledged] == [1, None, 3]


async def test_a_timed_out_attempt_is_retried_and_may_have_been_stored(scripted: Start) -> None:
    url, fake = await scripted(["silent"])
    # The timeout only has to end the silent attempt: 2 s leaves the answered retry far from it
    # on a loaded machine (at 0.2 s, a retry answered late would time out too: a third attempt).
    report = await post_all(url, three_deliveries()[:1], concurrency=1, timeout=2.0)
    [outcome] = report.outcomes
    assert (outcome.answer, outcome.attempts, outcome.uncertain) == ("accepted", 2, True)
    assert len(fake.heads) == 2


async def test_without_retry_a_503_is_an_unexpected_answer(scripted: Start) -> None:
    url, _ = await scripted(["503"])
    report = await post_all(url, three_deliveries(), concurrency=2, retry=False)
    assert report.http_statuses == {200: 2, 503: 1} and report.retries == 0
    assert report.unexpected == 1


async def test_gives_up_when_nothing_answers() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    # Giving up is what ends this; the outer 60 s is only a liveness bound. 3 s of silence: a
    # loaded machine once spent 0.3 s on the first refused attempts, leaving no retry.
    async with asyncio.timeout(60):
        report = await post_all(
            f"http://127.0.0.1:{port}", three_deliveries(), concurrency=2, give_up_after=3.0
        )
    assert report.no_answer == 3 and report.unexpected == 3 and report.retries > 0
    # Refused connections: nothing was sent, so nothing can have been stored.
    assert not any(o.uncertain for o in report.outcomes)


# --- on the wire --------------------------------------------------------------------------------


async def test_paths_and_headers_on_the_wire(scripted: Start) -> None:
    url, fake = await scripted([])
    other = EventConfig(slug="spring-conf", mode="token", secrets=("sekret",))
    signed = three_deliveries()[:1] + three_deliveries(other)[1:2]
    report = await post_all(url + "/behind/a/proxy/", signed, concurrency=1)
    assert report.unexpected == 0
    first, second = fake.heads
    assert first.startswith(b"POST /behind/a/proxy/webhooks/jte HTTP/1.1\r\n")
    assert second.startswith(b"POST /behind/a/proxy/webhooks/jte/spring-conf HTTP/1.1\r\n")
    lines = first.lower().split(b"\r\n")
    # The non-ASCII secret goes out as its UTF-8 bytes, exactly as JTE would send it.
    assert b"x-webhook-secret: " + SECRET.encode() in first
    assert b"content-type: application/json" in lines
    assert b"user-agent: rollcall-simulate/1" in lines
    assert f"content-length: {len(signed[0].body.encode())}".encode() in lines


async def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="not an http"):
        await post_all("ftp://127.0.0.1/", three_deliveries(), concurrency=1)
    with pytest.raises(ValueError, match="concurrency"):
        await post_all("http://127.0.0.1/", three_deliveries(), concurrency=0)


def test_summary_reads_like_a_sentence() -> None:
    report = Report(
        sent=10,
        elapsed=2.0,
        retries=1,
        http_statuses={200: 9, 401: 1},
        statuses={"accepted": 8, "duplicate": 1},
        no_answer=0,
        unexpected=0,
        acknowledged=[],
        outcomes=[],
    )
    assert summary(report).splitlines() == [
        "sent 10 deliveries in 2.00 s (5/s), 1 retries",
        "HTTP 200: 9, 401: 1; no answer: 0",
        "acknowledged: accepted 8, duplicate 1",
        "unexpected answers: 0",
    ]
