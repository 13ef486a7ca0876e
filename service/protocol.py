"""uvicorn's HTTP protocol with a deadline for request headers.

uvicorn times out idle keep-alive connections but waits forever for a request's headers, so a
client dripping them a byte at a time ("slowloris") holds a connection open indefinitely.
Here a connection whose headers are not complete within ROLLCALL_HEADER_TIMEOUT seconds of
its first byte (or of connecting) is closed. Bodies have their own deadline in intake.
"""

from __future__ import annotations

import asyncio
import os
from typing import Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT: Final = float(os.environ.get("ROLLCALL_HEADER_TIMEOUT") or 10.0)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes connections whose request headers take too long."""

    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

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
