"""The envelopes the analyst API answers with (msgspec Structs; the OpenAPI schemas come from
them). What they carry is each view's own read model (projections/roster.py, occupancy.py,
payments.py, status.py) and the store's history of an attendee.

Amounts are exact decimals, sent as JSON strings ("349.00"); times are ISO 8601 in UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from projections.occupancy import Bucket, CheckIn, Presence
from projections.payments import Payment
from projections.roster import Attendee

# What GET /v1/projections reports per view is what `rollcall status --json` prints.
from projections.status import ViewStatus
from service.eventstore.history import DeliveryRecord


class EventSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A configured JTE event."""

    event: str
    registered: int
    inside_now: int
    timezone: str  # its IANA time zone: days and hours are cut, and times shown, in it


class Events(msgspec.Struct, frozen=True):
    events: list[EventSummary]


class RosterPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of the roster; pass `next_cursor` back as `cursor` for the next one."""

    event: str
    items: list[Attendee]
    next_cursor: str | None


class AttendeeDetail(msgspec.Struct, frozen=True, kw_only=True):
    event: str
    attendee: Attendee
    presence: Presence | None
    history: list[DeliveryRecord]


class Timeline(msgspec.Struct, frozen=True, kw_only=True):
    event: str
    bucket: Literal["1m", "5m", "15m", "30m", "1h", "1d"]
    tz: str  # the IANA time zone the buckets are cut in
    start: datetime | None
    end: datetime | None
    buckets: list[Bucket]


class CheckIns(msgspec.Struct, frozen=True):
    event: str
    items: list[CheckIn]


class PaymentsPage(msgspec.Struct, frozen=True, kw_only=True):
    event: str
    items: list[Payment]
    next_cursor: str | None


class Projections(msgspec.Struct, frozen=True):
    views: list[ViewStatus]


class RebuildStarted(msgspec.Struct, frozen=True):
    status: Literal["rebuilding"]
    views: list[str]
