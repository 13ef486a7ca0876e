"""Webhook intake: limits, verification, interpretation, then the durable append before any 2xx.

Every answer is one of DESIGN.md's "Responses at intake"; nothing a sender puts in a request
leads to a 500, and nothing unverified is stored. What the headers decide is answered before
the body is read; a body only its signature can verify is read within the room unverified
deliveries share (service/http/admission.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from datetime import UTC, datetime
from typing import Final, Literal, Protocol

import msgspec
from starlette.types import Receive, Scope, Send

from domain.deliveries import delivery_key
from domain.interpret import PARSER_VERSION, Interpreted, interpret
from service.config import DEFAULT_SLUG, EventConfig, EventsWatcher, Settings
from service.eventstore import keys
from service.eventstore.store import DeliveryRecorded, StoreUnavailable, with_reading
from service.http.admission import Admission, Drop, Ticket, unverified_slots
from service.http.responses import Error
from service.http.server import DROP_EXTENSION
from service.http.verification import (
    Pending,
    Rejected,
    Verified,
    check_body,
    reason_code,
    screen,
)
from service.intake_log import IntakeLog
from service.metrics import METRICS, OTHER_EVENT

log = logging.getLogger("rollcall.intake")
_encoder: Final = msgspec.json.Encoder()

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


WEBHOOK_PATH: Final = "/webhooks/jte"
_MAX_SLUG_ECHO: Final = 64
_CLOSE: Final = (b"connection", b"close")
_ALLOW: Final = (b"allow", b"POST")


class Writer(Protocol):
    async def submit(self, delivery: DeliveryRecorded) -> int | None: ...


class IntakeAccepted(msgspec.Struct, frozen=True):
    """Stored, at this position in the event store."""

    status: Literal["accepted"]
    position: int


class IntakeDuplicate(msgspec.Struct, frozen=True):
    """Seen before: nothing stored again."""

    status: Literal["duplicate"]


class IntakeQuarantined(msgspec.Struct, frozen=True):
    """Verified but not readable: kept for replay."""

    status: Literal["quarantined"]


class Answer(msgspec.Struct, frozen=True):
    """What intake says back: a status, a JSON body and any extra headers."""

    status: int
    body: IntakeAccepted | IntakeDuplicate | IntakeQuarantined | Error
    headers: tuple[tuple[bytes, bytes], ...] = ()
    reason: str | None = None  # a refusal's snake_case reason, where the error code is not it
    key: str | None = None  # a duplicate's stored delivery

    @property
    def outcome(self) -> str:
        """What the metrics count it as: its body's status or error."""
        return self.body.error if isinstance(self.body, Error) else self.body.status


class _TooLarge(Exception):
    def __init__(self, *, drained: bool) -> None:
        super().__init__()
        self.drained = drained


class _Disconnected(Exception):
    pass


class _Busy(Exception):
    """No room for another unverified delivery, even after dropping the oldest."""


def is_webhook_path(path: str) -> bool:
    """True for /webhooks/jte and anything under it."""
    return path == WEBHOOK_PATH or path.startswith(WEBHOOK_PATH + "/")


class Intake:
    """ASGI app for POST /webhooks/jte and POST /webhooks/jte/{event}.

    It is the hot path, so it speaks ASGI directly rather than through the framework's routing
    and middleware layers (a tenth of the CPU per delivery, measured by scripts/bench_intake.py).
    """

    def __init__(self, settings: Settings, events: EventsWatcher) -> None:
        self._settings = settings
        self._events = events
        self._retry_after = str(settings.retry_after_seconds).encode()
        self._admission = Admission(
            unverified_slots(settings.max_connections), settings.unverified_body_memory
        )
        self.writer: Writer | None = None  # set by the lifespan once the store is open
        self.log = IntakeLog()  # started by the lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            answer = await self._answer(scope, receive)
        except _Disconnected:
            return  # nobody is left to answer
        except Exception:
            # A bug of ours, not the sender's: nothing was stored, so ask JTE to retry.
            log.exception("intake failed unexpectedly")
            answer = self._unavailable("intake failed unexpectedly; retry later")
        slug = _slug(scope["path"])
        event = slug if slug is not None and slug in self._events.events else OTHER_EVENT
        METRICS.delivery(event, answer.outcome)
        if 400 <= answer.status < 500:
            reason = answer.reason or answer.outcome
            METRICS.rejected(reason)
            self._log(scope, event, "rejected", answer.status, reason, None)
        elif answer.key is not None:
            self._log(scope, event, "duplicate", answer.status, "duplicate", answer.key)
        await _send_json(send, answer)

    def _log(
        self, scope: Scope, event: str, outcome: str, status: int, reason: str, key: str | None
    ) -> None:
        """Keep an answer that stored nothing in the intake log (metadata only)."""
        headers = _header_map(scope)
        declared = headers.get("content-length", b"").strip()
        client = scope.get("client")
        self.log.record(
            outcome=outcome,
            status=status,
            reason=reason,
            event=event,
            path=scope["path"],
            body_size=int(declared) if declared.isdigit() and len(declared) < 19 else None,
            headers=headers,
            peer=client[0] if client else None,
            delivery_key=key,
        )

    async def _answer(self, scope: Scope, receive: Receive) -> Answer:
        screened = self._screen(scope)
        if isinstance(screened, Answer):
            return screened
        event, headers, screening = screened
        try:
            body, verdict = await self._read(scope, receive, event, headers, screening)
        except _TooLarge as refused:
            limit = self._settings.body_limit
            # Unless the rest of the body was read (and dropped), close the connection so the
            # sender stops sending it.
            close = () if refused.drained else (_CLOSE,)
            return _error(413, "body_too_large", f"the body is over the {limit}-byte limit", *close)
        except TimeoutError:
            return _error(408, "body_timeout", "the body did not arrive in time", _CLOSE)
        except ValueError:
            return _error(400, "bad_content_length", "Content-Length is not a number", _CLOSE)
        except _Busy:
            return self._unavailable(
                "too many unverified deliveries in flight; retry later", _CLOSE
            )
        if isinstance(verdict, Rejected):
            return _unauthorized(event, verdict)
        return await self._store(delivery_record(event, headers, body, verdict.method))

    def _screen(
        self, scope: Scope
    ) -> Answer | tuple[EventConfig, dict[str, bytes], Verified | Pending]:
        """What the request line and headers alone decide. Each answer here is given before
        the body is read, so it closes the connection: the sender stops sending a body nobody
        will read, and keeps no connection open with it."""
        if scope["method"] != "POST":
            return _error(405, "method_not_allowed", "deliveries are POSTed", _ALLOW, _CLOSE)
        slug = _slug(scope["path"])
        event = self._events.event(slug) if slug is not None else None
        if event is None:
            shown = (slug or scope["path"])[:_MAX_SLUG_ECHO]
            return _error(404, "unknown_event", f"no JTE event {shown!r} is configured", _CLOSE)
        headers = _header_map(scope)
        if not _is_json(headers.get("content-type", b"")):
            return _error(
                415, "unsupported_media_type", "the body must be application/json", _CLOSE
            )
        verdict = screen(event, headers, time.time())
        if isinstance(verdict, Rejected):
            return _unauthorized(event, verdict, _CLOSE)
        return event, headers, verdict

    async def _read(
        self,
        scope: Scope,
        receive: Receive,
        event: EventConfig,
        headers: dict[str, bytes],
        verdict: Verified | Pending,
    ) -> tuple[bytes, Verified | Rejected]:
        """The body, and the verdict on it where only the body can decide."""
        declared = self._declared_length(headers)
        if isinstance(verdict, Pending):
            return await self._read_unverified(event, verdict, declared, receive, _drop_hook(scope))
        return await self._read_body(receive, None), verdict

    async def _read_unverified(
        self,
        event: EventConfig,
        pending: Pending,
        declared: int | None,
        receive: Receive,
        drop: Drop | None,
    ) -> tuple[bytes, Verified | Rejected]:
        """Read a body only its signature can verify, within the unverified share of slots and
        memory (a declared length is reserved up front), and check the signature."""
        ticket = self._admission.enter(declared or 0, drop)
        if ticket is None:
            raise _Busy
        try:
            body = await self._read_body(receive, None if declared is not None else ticket)
            return body, check_body(event, pending, body)
        finally:
            self._admission.leave(ticket)

    async def _store(self, delivery: DeliveryRecorded) -> Answer:
        if self.writer is None:
            return self._unavailable("rollcall is starting; retry later")
        try:
            position = await self.writer.submit(delivery)
        except StoreUnavailable as error:
            log.warning("store unavailable, answered 503: %s", error)
            return self._unavailable("the event store is unavailable; retry later")
        if position is None:
            return Answer(200, IntakeDuplicate("duplicate"), key=str(delivery.originator_id))
        if delivery.quarantine_reason is not None:
            return Answer(202, IntakeQuarantined("quarantined"))
        return Answer(200, IntakeAccepted("accepted", position))

    def _unavailable(self, message: str, *headers: tuple[bytes, bytes]) -> Answer:
        return _error(503, "unavailable", message, (b"retry-after", self._retry_after), *headers)

    def _declared_length(self, headers: dict[str, bytes]) -> int | None:
        """The body's declared length; refused at once (nothing of it read) over the limit."""
        declared = headers.get("content-length")
        if declared is None:
            return None
        if not declared.strip().isdigit():
            raise ValueError(declared)
        if int(declared) > self._settings.body_limit:
            raise _TooLarge(drained=False)
        return int(declared)

    async def _read_body(self, receive: Receive, ticket: Ticket | None) -> bytes:
        """Read at most body_limit bytes, charging them to `ticket` (a body of undeclared
        length still unverified) as they arrive."""
        limit = self._settings.body_limit
        # A small body usually arrives with the headers: no timer needed for that case.
        body, more = await _next_chunk(receive)
        chunks, size = [body], len(body)
        if ticket is not None and size <= limit:
            self._charge(ticket, size)
        async with asyncio.timeout(self._settings.body_timeout):
            while more and size <= limit:
                chunk, more = await _next_chunk(receive)
                size += len(chunk)
                chunks.append(chunk)
                if ticket is not None and size <= limit:
                    self._charge(ticket, len(chunk))
            if size > limit:
                raise _TooLarge(drained=await _drain(receive, more, limit * 4))
        return b"".join(chunks)

    def _charge(self, ticket: Ticket, size: int) -> None:
        if not self._admission.charge(ticket, size):
            raise _Busy


async def _drain(receive: Receive, more: bool, budget: int) -> bool:
    """Read and drop the rest of an oversized body, up to `budget` bytes, so the sender can
    finish sending and read the 413; True if the body ended within the budget."""
    while more and budget > 0:
        chunk, more = await _next_chunk(receive)
        budget -= len(chunk)
    return not more


async def _next_chunk(receive: Receive) -> tuple[bytes, bool]:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _Disconnected
    return message.get("body", b""), message.get("more_body", False)


def _slug(path: str) -> str | None:
    if path == WEBHOOK_PATH:
        return DEFAULT_SLUG
    rest = path[len(WEBHOOK_PATH) + 1 :]
    return rest if rest and "/" not in rest else None


def delivery_record(
    event: EventConfig,
    headers: dict[str, bytes],
    body: bytes,
    method: str,
    dedupe_secret: bytes | None = None,
) -> DeliveryRecorded:
    """What the store keeps of a verified delivery: its bytes, kept headers, and reading (the
    store encrypts the personal part). The dedupe key of an id-less delivery is keyed by
    `dedupe_secret`, by default this process's keyring's."""
    reading = interpret(body)
    delivery_id = reading.delivery_id or _header_delivery_id(event, headers)
    interpreted = reading if isinstance(reading, Interpreted) else None
    secret = dedupe_secret if dedupe_secret is not None else keys.active().dedupe_secret
    record = DeliveryRecorded(
        originator_id=delivery_key(event.slug, delivery_id, body, secret),
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
    return with_reading(record, interpreted)


def _header_delivery_id(event: EventConfig, headers: dict[str, bytes]) -> str | None:
    name = "webhook-id" if event.mode == "standard-webhooks" else event.delivery_id_header
    if name is None:
        return None
    value = headers.get(name, b"").strip().decode("latin-1")
    return value[:200] or None


@functools.cache
def _header_rules(
    event: EventConfig,
) -> tuple[frozenset[str | None], frozenset[str], frozenset[bytes]]:
    wanted = _KEPT_HEADERS | {event.timestamp_header, event.delivery_id_header}
    unwanted = _NEVER_KEPT | {event.token_header, event.signature_header}
    return wanted - unwanted, unwanted, frozenset(secret.encode() for secret in event.secrets)


def _kept_headers(event: EventConfig, headers: dict[str, bytes]) -> dict[str, str]:
    wanted, unwanted, secrets = _header_rules(event)
    return {
        name: value.decode("latin-1")
        for name, value in headers.items()
        if name in wanted and name not in unwanted and value.strip() not in secrets
    }


def _header_map(scope: Scope) -> dict[str, bytes]:
    # ASGI servers give header names lowercased; the first of repeated headers wins.
    headers: dict[str, bytes] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1"), value)
    return headers


def _is_json(content_type: bytes) -> bool:
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )


def _unauthorized(event: EventConfig, verdict: Rejected, *headers: tuple[bytes, bytes]) -> Answer:
    log.info("rejected delivery for %s: %s", event.slug, verdict.reason)
    answer = _error(401, "unauthorized", verdict.reason, *headers)
    return msgspec.structs.replace(answer, reason=reason_code(verdict.reason))


def _drop_hook(scope: Scope) -> Drop | None:
    # Our HTTP protocol lets intake close this request's connection to make room (admission).
    extension = scope.get("extensions", {}).get(DROP_EXTENSION)
    return extension["close"] if extension else None


def _error(status: int, error: str, message: str, *headers: tuple[bytes, bytes]) -> Answer:
    return Answer(status, Error(error, message), headers)


async def _send_json(send: Send, answer: Answer) -> None:
    body = _encoder.encode(answer.body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *answer.headers,
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
