"""Raw HTTP/1.1 for the drill: exact bytes out, the status (or a close, or a hang) back.

httpx would refuse to send most of what the hostile scenario needs to send."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Final

import msgspec

NO_ANSWER: Final = 0  # the "status" of a connection closed without an answer
HANG: Final = 15.0  # seconds after which a request neither answered nor closed has hung

Headers = list[tuple[bytes, bytes]]


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """What came back on one connection: the status (NO_ANSWER if closed without one)."""

    status: int
    seconds: float
    hung: bool = False
    body: bytes = b""  # the first bytes of the answer's body


def request(
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    length: int | None = None,
) -> bytes:
    """An HTTP/1.1 request asking to close after the answer; Content-Length is len(body)
    unless `length` says otherwise (-1: none)."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    declared = len(body) if length is None else length
    if declared >= 0 and (body or method == b"POST"):
        lines.append(b"Content-Length: %d" % declared)
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def exchange(port: int, wire: bytes, timeout: float = HANG) -> Answer:  # noqa: ASYNC109
    """Send `wire` on a new connection and read until the server closes it."""
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    try:
        transport, collector = await loop.create_connection(Collector, "127.0.0.1", port)
    except OSError:
        return _answer(bytearray(), started)  # refused: the health check reports a dead server
    transport.write(wire)
    try:
        await asyncio.wait_for(asyncio.shield(collector.closed), timeout)
    except TimeoutError:
        transport.abort()
        return _answer(collector.received, started, hung=b"\r\n\r\n" not in collector.received)
    return _answer(collector.received, started)


class Collector(asyncio.Protocol):
    """Keeps every byte that arrives, even when a reset follows the answer (streams would
    drop what they buffered), and says when the connection is over."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _answer(received: bytearray, started: float, hung: bool = False) -> Answer:
    status, body = parse_answer(bytes(received))
    return Answer(status=status, seconds=time.monotonic() - started, hung=hung, body=body[:300])


def parse_answer(received: bytes) -> tuple[int, bytes]:
    """The final status and body of a raw answer (interim 1xx answers skipped)."""
    rest = received
    while rest.startswith(b"HTTP/1."):
        head, complete, body = rest.partition(b"\r\n\r\n")
        status = head[9:12]
        if not (complete and status.isdigit()):
            break
        if not 100 <= int(status) < 200:
            return int(status), body
        rest = body
    return NO_ANSWER, b""


def wire_headers(values: dict[str, str]) -> Headers:
    # sign() gives the UTF-8 bytes of each value decoded as latin-1: encode them back.
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in values.items()]


def webhook_path(slug: str) -> bytes:
    return b"/webhooks/jte" if slug == "default" else f"/webhooks/jte/{slug}".encode()
