"""The webhook route: limits, verification, interpretation, then the durable append before any 2xx.

Every answer is one of DESIGN.md's "Responses at intake"; nothing a sender puts in a request
leads to a 500, and nothing unverified is stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from domain.interpret import PARSER_VERSION, Interpreted, interpret
from service.config import DEFAULT_SLUG, EventConfig, Settings
from service.http import json_response
from service.store import DeliveryRecorded, StoreUnavailable, delivery_key
from service.verification import Rejected, verify

log = logging.getLogger("rollcall.intake")

# Headers worth keeping with a delivery for later diagnosis and re-verification. Secrets and
# signatures are never kept, whatever the configuration says.
_KEPT_HEADERS: Final = frozenset(
    {
        "content-type",
        "content-length",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "x-request-id",
        "x-delivery-id",
        "x-webhook-id",
        "x-webhook-event",
        "x-webhook-timestamp",
        "x-jte-event",
        "x-forwarded-for",
        "x-real-ip",
    }
)
_NEVER_KEPT: Final = frozenset({"authorization", "cookie", "webhook-signature"})


class Writer(Protocol):
    async def submit(self, delivery: DeliveryRecorded) -> int | None: ...


class _TooLarge(Exception):
    pass


class Intake:
    """The handler behind POST /webhooks/jte and POST /webhooks/jte/{event}."""

    def __init__(self, settings: Settings, writer: Writer) -> None:
        self._settings = settings
        self._writer = writer

    async def __call__(self, request: Request) -> Response:
        slug = request.path_params.get("event", DEFAULT_SLUG)
        event = self._settings.event(slug)
        if event is None:
            return _error(404, "unknown_event", f"no JTE event {slug!r} is configured")
        if not _is_json(request.headers.get("content-type", "")):
            return _error(415, "unsupported_media_type", "the body must be application/json")
        try:
            body = await self._read_body(request)
        except _TooLarge:
            limit = self._settings.body_limit
            return _error(413, "body_too_large", f"the body is over the {limit}-byte limit")
        except TimeoutError:
            return _error(408, "body_timeout", "the body did not arrive in time")
        except ValueError:
            return _error(400, "bad_content_length", "Content-Length is not a number")
        except ClientDisconnect:
            return Response(status_code=400)

        headers = _header_map(request)
        verdict = verify(event, headers, body, time.time())
        if isinstance(verdict, Rejected):
            log.info("rejected delivery for %s: %s", slug, verdict.reason)
            return _error(401, "unauthorized", verdict.reason)

        delivery = _delivery(event, headers, body, verdict.method)
        try:
            position = await self._writer.submit(delivery)
        except StoreUnavailable as error:
            log.warning("store unavailable, answered 503: %s", type(error).__name__)
            return _error(
                503,
                "unavailable",
                "the event store is unavailable; retry later",
                headers={"Retry-After": str(self._settings.retry_after_seconds)},
            )
        if position is None:
            return json_response({"status": "duplicate"})
        if delivery.quarantine_reason is not None:
            return json_response({"status": "quarantined"}, status_code=202)
        return json_response({"status": "accepted", "position": position})

    async def _read_body(self, request: Request) -> bytes:
        """Read at most body_limit bytes; refuse early on the declared length."""
        limit = self._settings.body_limit
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise ValueError(declared)
            if int(declared) > limit:
                raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(self._settings.body_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _TooLarge
                chunks.append(chunk)
        return b"".join(chunks)


def _delivery(
    event: EventConfig, headers: dict[str, bytes], body: bytes, method: str
) -> DeliveryRecorded:
    reading = interpret(body)
    delivery_id = reading.delivery_id or _header_delivery_id(event, headers)
    interpreted = reading if isinstance(reading, Interpreted) else None
    return DeliveryRecorded(
        originator_id=delivery_key(event.slug, delivery_id, body),
        originator_version=1,
        timestamp=datetime.now(UTC),
        slug=event.slug,
        body=body,
        headers=_kept_headers(event, headers),
        verified_by=method,
        delivery_id=delivery_id,
        event_type=interpreted.event_type if interpreted else None,
        attendee_id=interpreted.attendee_id if interpreted else None,
        occurred_at=interpreted.occurred_at if interpreted else None,
        parser_version=PARSER_VERSION,
        quarantine_reason=None if interpreted else getattr(reading, "reason", "unreadable"),
    )


def _header_delivery_id(event: EventConfig, headers: dict[str, bytes]) -> str | None:
    name = "webhook-id" if event.mode == "standard-webhooks" else event.delivery_id_header
    if name is None:
        return None
    value = headers.get(name, b"").strip().decode("latin-1")
    return value[:200] or None


def _kept_headers(event: EventConfig, headers: dict[str, bytes]) -> dict[str, str]:
    wanted = _KEPT_HEADERS | {event.timestamp_header, event.delivery_id_header}
    unwanted = _NEVER_KEPT | {event.token_header, event.signature_header}
    secrets = {secret.encode() for secret in event.secrets}
    return {
        name: value.decode("latin-1")
        for name, value in headers.items()
        if name in wanted and name not in unwanted and value.strip() not in secrets
    }


def _header_map(request: Request) -> dict[str, bytes]:
    headers: dict[str, bytes] = {}
    for name, value in request.scope["headers"]:
        headers.setdefault(name.decode("latin-1").lower(), value)
    return headers


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _error(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    body: dict[str, Any] = {"error": error, "message": message}
    return json_response(body, status_code=status, headers=headers)
