"""Clients of the hostile scenario that hold connections instead of finishing requests.

Idle and slow clients, more of them than the server's connection cap, and bodies nobody can
verify yet (a made-up signature, a megabyte each), more of them than the memory the server
keeps for such bodies. The promises: every one is let go within the deadlines; genuine
deliveries and health checks still get through promptly meanwhile; and the server's memory
stays within its bound for unverified bodies.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import msgspec

from tests.drill.fuzz import stored_answer
from tests.drill.harness import Serve, memory_mb, reset_peak
from tests.drill.report import Finding, Size, top
from tests.drill.wire import (
    NO_ANSWER,
    Answer,
    Collector,
    Headers,
    exchange,
    parse_answer,
    request,
)

DEADLINE: Final = 2  # seconds: the hostile server's header and body deadlines
CAP: Final = 48  # the hostile server's ROLLCALL_MAX_CONNECTIONS: the slow clients outnumber it
UNVERIFIED_MB: Final = 8  # its ROLLCALL_UNVERIFIED_BODY_MEMORY, in MiB
FLOOD_BODIES: Final = 60  # unverified 1 MiB bodies held open at once (issue 10: 50 MB)
FLOOD_SLACK_MB: Final = 16  # what the server may grow by beyond the bodies it holds
PROMPT: Final = 2.0  # seconds within which a delivery or health check must be answered
HEALTH: Final = request(b"GET", b"/healthz", [])
_FAKE_SIGNATURE: Final = (b"X-Webhook-Signature", b"sha256=" + b"0" * 64)


# --- Slow and idle clients ------------------------------------------------------------------


class Drip(msgspec.Struct, frozen=True):
    """One slow client: how it behaved, what it got, and when the server let it go."""

    kind: str  # one of DRIP_EXPECT's
    status: int
    seconds: float
    held: bool  # still open at the drill's limit


class Slow(msgspec.Struct, frozen=True, kw_only=True):
    drips: list[Drip]
    during: list[Answer]  # normal deliveries sent while the slow clients held on
    health: list[Answer]  # health checks sent meanwhile


DRIP_LIMIT: Final = 2 * DEADLINE + 4.0  # seconds a slow client may hold a connection
# What each kind may get: a close without an answer where the server made room (idle, or the
# oldest unverified body) or its deadline passed; 401 at once where the headers condemn (or a
# close, if the server made room before it had read them: in a burst of connections beyond
# the cap, a connection whose head is not read yet is as idle as any).
DRIP_EXPECT: Final = {
    "idle": frozenset({NO_ANSWER}),  # connects and sends nothing
    "headers": frozenset({NO_ANSWER, 400, 408}),  # its head, a byte a second
    "unsigned": frozenset({NO_ANSWER, 401}),  # no credential, then its body a byte a second
    "wrong token": frozenset({NO_ANSWER, 401}),  # a wrong token, then its body likewise
    "body": frozenset({NO_ANSWER, 408}),  # a made-up signature, then its body a byte a second
    "stall": frozenset({NO_ANSWER, 408}),  # a made-up signature, then no body at all
}
_CREDENTIALS: Final[dict[str, Headers]] = {
    "unsigned": [],
    "wrong token": [(b"X-Webhook-Secret", b"not the secret")],
    "body": [_FAKE_SIGNATURE],
    "stall": [_FAKE_SIGNATURE],
}


async def slow_clients(port: int, count: int, normal: Sequence[bytes]) -> Slow:
    """CAP idle clients, enough to fill the connection cap alone, then `count` slow clients of
    every kind; while they hold on, send `normal` deliveries and as many health checks."""
    mixed = (list(DRIP_EXPECT)[i % len(DRIP_EXPECT)] for i in range(count))
    kinds = [*(["idle"] * CAP), *mixed]
    body = b'{"event":"AttendeeCheckedIn","attendee":{"id":"slow"}}' + b" " * 200
    drips = [asyncio.create_task(_drip(port, kind, body)) for kind in kinds]
    await asyncio.sleep(1.0)  # every slow client has connected and begun
    during, health = [], []
    for wire in normal:
        during.append(await exchange(port, wire))
        health.append(await exchange(port, HEALTH))
        await asyncio.sleep(0.2)
    return Slow(drips=list(await asyncio.gather(*drips)), during=during, health=health)


async def _drip(port: int, kind: str, body: bytes) -> Drip:
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    transport, collector = await loop.create_connection(Collector, "127.0.0.1", port)
    headers = [(b"Content-Type", b"application/json"), *_CREDENTIALS.get(kind, [])]
    head = request(b"POST", b"/webhooks/jte", headers, body)[: -len(body)]
    if kind in _CREDENTIALS:
        transport.write(head)
    for byte in {"idle": b"", "headers": head, "stall": b""}.get(kind, body):
        if collector.closed.done():
            break
        transport.write(bytes([byte]))
        # A byte a second, but notice a close at once.
        await asyncio.wait([collector.closed], timeout=1.0)
    left = DRIP_LIMIT - (time.monotonic() - started)
    done, _ = await asyncio.wait([collector.closed], timeout=max(0.0, left))
    seconds = time.monotonic() - started
    transport.abort()
    return Drip(kind, parse_answer(bytes(collector.received))[0], seconds, held=not done)


def check_slow(finding: Finding, slow: Slow, size: Size) -> None:
    held = sum(1 for d in slow.drips if d.held)
    wrong = Counter(
        f"{d.kind} got {d.status or 'a close'}"
        for d in slow.drips
        if not d.held and d.status not in DRIP_EXPECT[d.kind]
    )
    finding.check(len(slow.drips) >= size.slow_clients + CAP, "not every slow client ran")
    finding.check(held == 0, f"{held} slow clients still held a connection after {DRIP_LIMIT} s")
    finding.check(not wrong, f"slow clients answered unlike DESIGN ({top(wrong)})")
    prompt = size.within(PROMPT)
    late = [a for a in slow.during if not stored_answer(a) or a.seconds > prompt]
    finding.check(
        not late, f"{len(late)} deliveries during the slow attack not accepted in {prompt:.0f} s"
    )
    sick = [a for a in slow.health if a.status != 200 or a.seconds > prompt]
    finding.check(
        not sick,
        f"{len(sick)} health checks during the slow attack not answered 200 in {prompt:.0f} s",
    )


def slowest(slow: Slow, *kinds: str) -> str:
    seconds = [d.seconds for d in slow.drips if d.kind in kinds and not d.held]
    return f"{max(seconds, default=0):.1f} s"


# --- Bodies nobody can verify yet -----------------------------------------------------------


class Flood(msgspec.Struct, frozen=True, kw_only=True):
    """Unverified 1 MiB bodies held open at once: what the server let in, and what it cost."""

    bodies: int
    dropped: int  # closed by the server, unanswered, to make room for newer ones
    peak_growth_mb: float
    delivery: Answer  # a genuine delivery sent while they held on
    health: Answer


def unverified_flood(server: Serve, megabyte: int, delivery: bytes) -> Flood:
    """FLOOD_BODIES connections, each with a made-up signature, declaring `megabyte` bytes
    (the body limit) and sending all but the last; then `delivery` and a health check."""
    headers = [(b"Content-Type", b"application/json"), _FAKE_SIGNATURE]
    wire = request(b"POST", b"/webhooks/jte", headers, b"x" * (megabyte - 1), length=megabyte)
    rss_before, reset = memory_mb(server.pid)[0], reset_peak(server.pid)
    hwm_before = memory_mb(server.pid)[1]
    dropped, answers = asyncio.run(_flood(server.port, wire, [delivery, HEALTH]))
    growth = memory_mb(server.pid)[1] - (rss_before if reset else hwm_before)
    return Flood(
        bodies=FLOOD_BODIES,
        dropped=dropped,
        peak_growth_mb=max(0.0, growth),
        delivery=answers[0],
        health=answers[1],
    )


async def _flood(port: int, wire: bytes, meanwhile: list[bytes]) -> tuple[int, list[Answer]]:
    loop = asyncio.get_running_loop()
    held: list[tuple[asyncio.Transport, Collector]] = []
    try:
        for _ in range(FLOOD_BODIES):
            transport, collector = await loop.create_connection(Collector, "127.0.0.1", port)
            transport.write(wire)
            held.append((transport, collector))
        await _settle(port, held)
        answers = [await exchange(port, request) for request in meanwhile]
        dropped = sum(1 for _, c in held if c.closed.done() and not c.received)
        return dropped, answers
    finally:
        for transport, _ in held:
            transport.abort()


async def _settle(port: int, held: list[tuple[asyncio.Transport, Collector]]) -> None:
    """Until every body is sent and read by the server (or its connection closed), so that the
    memory measured is what the server holds, not what waits in the kernel; 30 s at most."""
    for _ in range(600):
        sent = all(t.get_write_buffer_size() == 0 or c.closed.done() for t, c in held)
        if sent and _unread(port) == 0:
            return
        await asyncio.sleep(0.05)


def _unread(port: int) -> int:
    """Bytes that arrived on the server's connections but the server has not read yet."""
    local = f":{port:04X}"
    unread = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(local):  # local_address: the server's side
            unread += int(fields[4].split(":")[1], 16)  # tx_queue:rx_queue
    return unread


def check_flood(finding: Finding, flood: Flood, size: Size) -> None:
    bound, prompt = UNVERIFIED_MB + FLOOD_SLACK_MB, size.within(PROMPT)
    finding.check(
        flood.peak_growth_mb < bound,
        f"{flood.bodies} unverified 1 MiB bodies grew the server by "
        f"{flood.peak_growth_mb:.0f} MB (bound {UNVERIFIED_MB} MiB, {bound} MB allowed)",
    )
    finding.check(
        stored_answer(flood.delivery) and flood.delivery.seconds <= prompt,
        f"a delivery during the unverified bodies got {flood.delivery.status or 'nothing'} "
        f"in {flood.delivery.seconds:.1f} s",
    )
    finding.check(
        flood.health.status == 200 and flood.health.seconds <= prompt,
        f"a health check during the unverified bodies got {flood.health.status or 'nothing'}",
    )
