"""uvicorn's HTTP protocol with a deadline and a size limit for request headers.

uvicorn times out idle keep-alive connections but waits forever for a request's headers, so a
client dripping them a byte at a time ("slowloris") holds a connection open indefinitely.
Here a connection whose headers are not complete within `header_timeout` seconds of
its first byte (or of connecting) is closed, and so is one whose body has not begun by then:
intake's body deadline runs from the body's first chunk, so a sender that stops right after
its headers would otherwise hold the connection forever.

uvicorn (httptools) also buffers a request line and headers of any size, so a client can grow
the process by whatever it sends before the deadline. Here a request whose line and headers
pass `header_limit` bytes is answered 431 and its connection closed.

uvicorn's connection cap (limit_concurrency, `max_connections`) counts idle connections
too, so a few idle sockets make every request a 503 until their deadline. Here only requests in
progress count against it, and a connection beyond the cap closes the one that has been idle
longest (no request in progress: still sending its headers, or kept alive between requests).
Each request also carries a way to drop its connection (scope extension DROP_EXTENSION), with
which intake makes room among unverified deliveries (service/http/admission.py).

The limits are settings (service/config.py): of the class `guarded(settings)` makes for a server
run in this process, or, for `rollcall serve`'s (which names this module's class to uvicorn),
those of the environment its process was started with.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, ClassVar, Final

import msgspec
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.config import ConfigError, Tuning, load_settings
from service.http.responses import Error
from service.intake_log import current as current_log
from service.metrics import METRICS, OTHER_EVENT

log = logging.getLogger("rollcall.server")

DROP_EXTENSION: Final = "rollcall.drop"  # scope["extensions"][...]["close"]() drops the request


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes connections whose request headers take too long, and
    refuses those whose headers are too large."""

    tuning: ClassVar[Tuning | None] = None  # None: the environment's (see the module's doc)
    _header_deadline: asyncio.TimerHandle | None = None
    _in_head = True  # the bytes arriving belong to a request line or headers
    _head_bytes = 0  # of the current request's line and headers so far
    _idle_since = 0.0  # loop time since which no request has been in progress

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        tuning = self.tuning or _environment_tuning()
        self.header_timeout, self.header_limit = tuning.header_timeout, tuning.header_limit
        # Take the cap from uvicorn, which would count idle connections against it.
        self.cap, self.limit_concurrency = self.limit_concurrency, None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_since = self.loop.time()
        self._arm()
        if self.cap is not None and len(self.connections) > self.cap:
            self._close_longest_idle()

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        room = self.header_limit - self._head_bytes
        self._head_bytes += min(len(data), room)
        # Feed no more than the limit allows; if the headers end within it, the rest is body.
        super().data_received(data[:room])
        if self.transport.is_closing():
            return
        if self._in_head and self._head_bytes >= self.header_limit:
            self._refuse_head()
        elif len(data) > room:
            super().data_received(data[room:])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {DROP_EXTENSION: {"close": self._drop}}
        self._arm()

    def on_headers_complete(self) -> None:
        # The deadline stays armed until the body's first byte or the request's end.
        self._in_head = False
        if self.cap is None or len(self.tasks) < self.cap:
            super().on_headers_complete()
            return
        self.logger.warning("%d requests in progress: answered 503.", len(self.tasks))
        app, self.app = self.app, service_unavailable
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        super().on_response_complete()

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
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _idle(self) -> bool:
        return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

    def _close_longest_idle(self) -> None:
        idle = [
            c
            for c in self.connections
            if isinstance(c, GuardedHttpToolsProtocol)
            and c is not self
            and c._idle()
            and not c.transport.is_closing()
        ]
        if idle:
            min(idle, key=lambda c: c._idle_since).transport.close()
            METRICS.connection_dropped("idle")

    def _drop(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse_head(self) -> None:
        self.logger.warning("Request headers over %d bytes: answered 431.", self.header_limit)
        METRICS.rejected("headers_too_large")
        intake_log = current_log()
        if intake_log is not None:
            url = bytes(getattr(self, "url", b"") or b"")
            intake_log.record(
                outcome="rejected",
                status=431,
                reason="headers_too_large",
                event=OTHER_EVENT,
                path=url.split(b"?", 1)[0].decode("latin-1") or "?",
                body_size=None,
                headers={},
                peer=self.client[0] if self.client else None,
            )
        if self.cycle is None or self.cycle.response_complete:  # no answer is being sent
            body = _too_large(self.header_limit)
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n"
                b"connection: close\r\n\r\n" + body
            )
        self.transport.close()


def guarded(tuning: Tuning) -> type[GuardedHttpToolsProtocol]:
    """The protocol with these settings' limits, for a server run in this process."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"tuning": tuning})


@functools.cache
def _environment_tuning() -> Tuning:
    try:
        return load_settings()
    except ConfigError as error:
        # `rollcall serve` checked these settings before starting; the file changed since.
        log.error("configuration unreadable, default header limits apply: %s", error)
        return Tuning()


@functools.cache
def _too_large(limit: int) -> bytes:
    message = f"the request line and headers are over the {limit}-byte limit"
    return msgspec.json.encode(Error("headers_too_large", message))
