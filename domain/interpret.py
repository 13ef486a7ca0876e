"""Interpretation of a raw JTE delivery body: which attendee event it is, or why it cannot be read.

JTE does not document its envelope, so the reader is tolerant (see DESIGN.md, "Tolerant
envelope"). Interpretation is a versioned, pure function of the stored bytes: when the parser
changes, bump PARSER_VERSION and rebuild the views from the same stored deliveries.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import msgspec

PARSER_VERSION: Final = 1

EVENT_TYPES: Final = frozenset(
    {
        "AttendeeRegistered",
        "AttendeeImported",
        "AttendeeUpdated",
        "AttendeeDeleted",
        "AttendeeCheckedIn",
        "AttendeeCheckedOut",
        "AttendeePaymentConfirmed",
    }
)

_TYPE_KEYS: Final = ("event", "eventType", "type")
_ATTENDEE_KEYS: Final = ("attendee", "data")
_DELIVERY_ID_KEYS: Final = ("id", "deliveryId")
_OCCURRED_AT_KEYS: Final = ("occurredAt", "timestamp", "createdAt")
_MAX_ID_LENGTH: Final = 200

# Floats decode as Decimal so that amounts are exact whatever form JTE sends them in.
_decoder: Final = msgspec.json.Decoder(float_hook=Decimal)


class Interpreted(msgspec.Struct, frozen=True, kw_only=True):
    """One attendee event read from a delivery; `attendee` holds every key as sent."""

    event_type: str
    attendee_id: str
    attendee: dict[str, Any]
    delivery_id: str | None = None
    occurred_at: datetime | None = None


class Unreadable(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery that cannot be interpreted, with the reason and any delivery id it carried."""

    reason: str
    delivery_id: str | None = None


def interpret(body: bytes) -> Interpreted | Unreadable:
    """Read a delivery body; never raises, whatever the bytes are."""
    try:
        envelope = _decoder.decode(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError) as error:
        return Unreadable(reason=f"body is not valid JSON: {_short(error)}")
    if not isinstance(envelope, dict):
        return Unreadable(reason="body is not a JSON object")

    delivery_id = _opaque_id(_first(envelope, _DELIVERY_ID_KEYS))
    event_type = _first(envelope, _TYPE_KEYS)
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        return Unreadable(
            reason=f"unknown event type: {_short(event_type)}", delivery_id=delivery_id
        )

    attendee = _attendee_object(envelope)
    if attendee is None:
        return Unreadable(reason="no attendee object", delivery_id=delivery_id)
    attendee_id = _opaque_id(attendee.get("id", attendee.get("attendeeId")))
    if attendee_id is None:
        attendee_id = _opaque_id(envelope.get("attendeeId"))
    if attendee_id is None:
        return Unreadable(reason="no attendee id", delivery_id=delivery_id)

    return Interpreted(
        event_type=event_type,
        attendee_id=attendee_id,
        attendee=attendee,
        delivery_id=delivery_id,
        occurred_at=parse_time(_first(envelope, _OCCURRED_AT_KEYS)),
    )


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 string or a Unix time (seconds or milliseconds) as an aware UTC datetime."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.strip())
        elif isinstance(value, int | Decimal):
            seconds = Decimal(value)
            # Ten-digit Unix seconds reach the year 2286; anything larger is milliseconds.
            if abs(seconds) >= 10_000_000_000:
                seconds /= 1000
            parsed = datetime.fromtimestamp(float(seconds), tz=UTC)
        else:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        # Inside the try: an offset can carry a time past datetime's range in UTC
        # ("0001-01-01T00:00:00+14:00").
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError, OSError, ArithmeticError):
        return None


def _first(envelope: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in envelope:
            return envelope[key]
    return None


def _attendee_object(envelope: dict[str, Any]) -> dict[str, Any] | None:
    candidate = _first(envelope, _ATTENDEE_KEYS)
    if isinstance(candidate, dict) and isinstance(candidate.get("attendee"), dict):
        # A `data` wrapper around the attendee, as some senders nest it.
        candidate = candidate["attendee"]
    return candidate if isinstance(candidate, dict) else None


def _opaque_id(value: object) -> str | None:
    """Ids are opaque strings: JTE may use integers or GUIDs, so both are kept as text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        value = value.strip()
        # A NUL cannot be stored in a text column; such an id is not an id.
        if 0 < len(value) <= _MAX_ID_LENGTH and "\x00" not in value:
            return value
    return None


def _short(value: object, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
