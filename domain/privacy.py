"""What of a delivery is not personal data: its skeleton, kept readable when the body is sealed.

A stored body is encrypted under its attendee's data key; erasure destroys that key. What the
views need without the person (the event type, attendee id, occurrence time, delivery id, and a
payment's amount, currency, method and reference, which accounting keeps) is written beside it
as a skeleton: a JTE body of its own that the same parser reads, so a view rebuilt after an
erasure folds the same events, minus the person.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from domain.interpret import Interpreted
from domain.ledger import payment_fields

# Amounts keep their JSON form (a number stays a number, with its digits).
_encode: Final = msgspec.json.Encoder(decimal_format="number").encode

# The kind of the stored record an erasure is (DeliveryState.verified_by).
ERASURE: Final = "rollcall-erasure"


def skeleton(reading: Interpreted) -> bytes:
    """The body without its person: what the parser reads back as the same event, same
    attendee, same time and the same payment, with no name, email or form field."""
    payment = None
    if reading.event_type == "AttendeePaymentConfirmed":
        payment = {k: v for k, v in payment_fields(reading.attendee).items() if v is not None}
    return bare_skeleton(
        reading.event_type, reading.attendee_id, reading.delivery_id, reading.occurred_at, payment
    )


def bare_skeleton(
    event_type: str | None,
    attendee_id: str,
    delivery_id: str | None,
    occurred_at: datetime | None,
    payment: dict[str, Any] | None = None,
) -> bytes:
    """A skeleton from what intake stored beside a body (for a body the parser of today no
    longer reads as it did)."""
    attendee: dict[str, Any] = {"id": attendee_id}
    if payment is not None:
        attendee["payment"] = payment
    envelope: dict[str, Any] = {"event": event_type, "attendee": attendee}
    if delivery_id is not None:
        envelope["id"] = delivery_id
    if occurred_at is not None:
        envelope["occurredAt"] = occurred_at.astimezone(UTC).isoformat()
    return _encode(envelope)


def quarantine_skeleton() -> bytes:
    """A quarantined delivery's skeleton: nothing of it can be read without its key."""
    return b"{}"
