"""The shapes the analyst API answers with (msgspec Structs; the OpenAPI schemas come from them).

Amounts are exact decimals, sent as JSON strings ("349.00"); times are ISO 8601 in UTC.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Literal

import msgspec

# What GET /v1/projections reports per view is what `rollcall status --json` prints.
from projections.status import ViewStatus


class EventSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A configured JTE event."""

    event: str
    registered: int
    inside_now: int


class Events(msgspec.Struct, frozen=True):
    events: list[EventSummary]


class Attendee(msgspec.Struct, frozen=True, kw_only=True):
    """One attendee as the roster has it now."""

    attendee_id: str
    status: Literal["registered", "deleted", "unregistered"]
    email: str | None
    first_name: str | None
    last_name: str | None
    role: str | None
    company: str | None
    ticket: str | None
    added_by_admin: bool | None
    checked_in: bool
    paid: bool
    amount: Decimal | None
    currency: str | None
    payment_method: str | None
    paid_at: datetime | None
    registered_at: datetime | None
    first_seen_at: datetime
    deleted_at: datetime | None
    last_check_in_at: datetime | None
    last_check_out_at: datetime | None
    fields: msgspec.Raw  # the attendee's form fields as JTE sent them (JSON object)


class RosterPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of the roster; pass `next_cursor` back as `cursor` for the next one."""

    event: str
    items: list[Attendee]
    next_cursor: str | None


class Presence(msgspec.Struct, frozen=True, kw_only=True):
    inside: bool
    entered_at: datetime | None
    check_ins: int
    check_outs: int
    repeated_check_ins: int
    stray_check_outs: int
    first_in_at: datetime | None
    last_in_at: datetime | None
    last_out_at: datetime | None


class DeliveryRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One delivery about the attendee, as kept in the event store."""

    position: int
    received_at: datetime
    event_type: str
    occurred_at: datetime | None
    delivery_id: str | None
    attendee: msgspec.Raw  # the attendee object exactly as in the delivery (JSON object)


class AttendeeDetail(msgspec.Struct, frozen=True, kw_only=True):
    event: str
    attendee: Attendee
    presence: Presence | None
    history: list[DeliveryRecord]


class Occupancy(msgspec.Struct, frozen=True, kw_only=True):
    """How many are inside now (or were at `at`), and how the day went up to then.

    entries/exits count stays started and ended; the check-in and check-out delivery counts
    (repeats and strays included) are given for now only, and are null with `at`."""

    event: str
    at: datetime | None
    inside: int
    peak: int
    peak_at: datetime | None
    entries: int
    exits: int
    unique_attendees_inside: int
    check_ins: int | None
    check_outs: int | None
    repeated_check_ins: int | None
    stray_check_outs: int | None


class Bucket(msgspec.Struct, frozen=True, kw_only=True):
    """[start, end): arrivals, departures, and how many were inside at `end`."""

    start: datetime
    end: datetime
    entered: int
    exited: int
    inside: int


class Timeline(msgspec.Struct, frozen=True, kw_only=True):
    event: str
    bucket: Literal["5m", "15m", "1h"]
    start: datetime | None
    end: datetime | None
    buckets: list[Bucket]


class CheckIn(msgspec.Struct, frozen=True, kw_only=True):
    attendee_id: str
    first_name: str | None
    last_name: str | None
    at: datetime
    inside: bool


class CheckIns(msgspec.Struct, frozen=True):
    event: str
    items: list[CheckIn]


class Payment(msgspec.Struct, frozen=True, kw_only=True):
    """One ledger entry: one payment reference (or one delivery when it had none)."""

    entry_key: str
    attendee_id: str
    amount: Decimal
    currency: str
    method: str
    reference: str | None
    paid_at: datetime


class PaymentsPage(msgspec.Struct, frozen=True, kw_only=True):
    event: str
    items: list[Payment]
    next_cursor: str | None


class CurrencyTotal(msgspec.Struct, frozen=True, kw_only=True):
    currency: str
    payments: int
    amount: Decimal


class MethodTotal(msgspec.Struct, frozen=True, kw_only=True):
    currency: str
    method: str
    payments: int
    amount: Decimal


class DayTotal(msgspec.Struct, frozen=True, kw_only=True):
    day: date
    currency: str
    payments: int
    amount: Decimal


class PaymentSummary(msgspec.Struct, frozen=True, kw_only=True):
    event: str
    by_currency: list[CurrencyTotal]
    by_method: list[MethodTotal]
    by_day: list[DayTotal]


class Projections(msgspec.Struct, frozen=True):
    views: list[ViewStatus]


class RebuildStarted(msgspec.Struct, frozen=True):
    status: Literal["rebuilding"]
    views: list[str]
