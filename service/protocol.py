"""uvicorn's HTTP protocol with a deadline and a size limit for request headers.

uvicorn times out idle keep-alive connections but waits forever for a request's headers, so a
client dripping them a byte at a time ("slowloris") holds a connection open indefinitely.
Here a connection whose headers are not complete within ROLLCALL_HEADER_TIMEOUT seconds of
its first byte (or of connecting) is closed, and so is one whose body has not begun by then:
intake's body deadline runs from the body's first chunk, so a sender that stops right after
its headers would otherwise hold the connection forever.

uvicorn (httptools) also buffers a request line and headers of any size, so a client can grow
the process by whatever it sends before the deadline. Here a request whose line and headers
pass ROLLCALL_HEADER_LIMIT bytes is answered 431 and its connection closed.
"""

from __future__ import annotations

import asyncio
import os
from typing import Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT: Final = float(os.environ.get("ROLLCALL_HEADER_TIMEOUT") or 10.0)
DEFAULT_HEADER_LIMIT: Final = 64 * 1024
HEADER_LIMIT: Final = int(os.environ.get("ROLLCALL_HEADER_LIMIT") or DEFAULT_HEADER_LIMIT)
_TOO_LARGE: Final = (
    b'{"error":"headers_too_large","message":"the request line and headers are over the '
    + str(HEADER_LIMIT).encode()
    + b'-byte limit"}'
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes connections whose request headers take too long, and
    refuses those whose headers are too large."""

    _header_deadline: asyncio.TimerHandle | None = None
    _in_head = True  # the bytes arriving belong to a request line or headers
    _head_bytes = 0  # of the current request's line and headers so far

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        room = HEADER_LIMIT - self._head_bytes
        self._head_bytes += min(len(data), room)
        # Feed no more than the limit allows; if the headers end within it, the rest is body.
        super().data_received(data[:room])
        if self.transport.is_closing():
            return
        if self._in_head and self._head_bytes >= HEADER_LIMIT:
            self._refuse_head()
        elif len(data) > room:
            super().data_received(data[room:])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        # The deadline stays armed until the body's first byte or the request's end.
        self._in_head = False
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._header_deadline is not None:
            self._disarm()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes = True, 0  # what follows is the next request's
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(HEADER_TIMEOUT, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse_head(self) -> None:
        self.logger.warning("Request headers over %d bytes: answered 431.", HEADER_LIMIT)
        if self.cycle is None or self.cycle.response_complete:  # no answer is being sent
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\n"
                b"content-length: " + str(len(_TOO_LARGE)).encode() + b"\r\n"
                b"connection: close\r\n\r\n" + _TOO_LARGE
            )
        self.transport.close()
