"""Attendee events as the folds see them, and the order that makes views order-insensitive.

Deliveries arrive late, twice or out of order. Each event carries an `order`: its occurrence time
followed by its delivery key. "Later" always means a greater order, so the same set of
deliveries gives the same views whatever order they arrived in; the key only breaks ties
between deliveries stamped with the same instant. A delivery without an occurrence time is
placed at its receipt time, and ties among those go by position: arrival order decides.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import msgspec

from domain.interpret import Interpreted

REGISTERED: Final = "AttendeeRegistered"
IMPORTED: Final = "AttendeeImported"
UPDATED: Final = "AttendeeUpdated"
DELETED: Final = "AttendeeDeleted"
CHECKED_IN: Final = "AttendeeCheckedIn"
CHECKED_OUT: Final = "AttendeeCheckedOut"
PAYMENT_CONFIRMED: Final = "AttendeePaymentConfirmed"
PROFILE_EVENTS: Final = frozenset({REGISTERED, IMPORTED, UPDATED})
# Not JTE's: rollcall's record that an attendee's personal data was erased (domain.privacy).
ERASED: Final = "AttendeeErased"


class AttendeeEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One interpreted delivery: what happened to which attendee of which JTE event, and when."""

    slug: str
    attendee_id: str
    event_type: str
    at: datetime  # when it happened: occurredAt, else when rollcall received it
    timed: bool  # the delivery carried its own occurrence time
    order: str  # sortable: greater means later
    position: int  # global position in the event store
    key: UUID  # the delivery key
    attendee: dict[str, Any]  # the attendee object as sent


def attendee_event(
    slug: str, position: int, key: UUID, received_at: datetime, reading: Interpreted
) -> AttendeeEvent:
    """The fold input for a delivery read at `position`."""
    at = reading.occurred_at or received_at
    return AttendeeEvent(
        slug=slug,
        attendee_id=reading.attendee_id,
        event_type=reading.event_type,
        at=at,
        timed=reading.occurred_at is not None,
        order=order_token(at, key, None if reading.occurred_at else position),
        position=position,
        key=key,
        attendee=reading.attendee,
    )


def order_token(at: datetime, key: UUID, position: int | None = None) -> str:
    """A string that sorts like (time, tie-break): fixed-width UTC microseconds, then the key,
    or, for a delivery placed by its receipt time, its position (after any key at that instant)."""
    utc = at.astimezone(UTC).replace(tzinfo=None)
    tiebreak = str(key) if position is None else f"~{position:020d}"
    return f"{utc.isoformat(timespec='microseconds')}Z|{tiebreak}"
