"""The roster: each attendee's current record, built so that arrival order does not matter.

Every part of an entry is a "latest wins" register or a minimum, keyed by event order, so
applying a set of events in any order, with any repeats, gives the same entry:

- profile fields: per field, the value from the latest delivery carrying it; deliveries of
  Registered/Imported/Updated outrank the fields other events carry (those only fill in, say,
  the name of a walk-in whose registration has not arrived);
- status: `deleted` when the latest of (profile event, deletion) is a deletion — a later
  Registered/Imported/Updated revives the attendee; `unregistered` when only check-ins or
  payments were seen;
- inside: the latest of (check-in, check-out, deletion) is a check-in;
- payment: the latest confirmation the ledger can record (domain.ledger): its amount, currency
  and method. One the ledger cannot record (no usable amount or currency) is no payment here
  either, so `paid` and the amount always agree with the ledger.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Literal

import msgspec

from domain.events import (
    CHECKED_IN,
    CHECKED_OUT,
    DELETED,
    ERASED,
    PAYMENT_CONFIRMED,
    PROFILE_EVENTS,
    AttendeeEvent,
)
from domain.ledger import LedgerEntry, PaymentError, ledger_entry

Status = Literal["registered", "deleted", "unregistered"]
_PROFILE_RANK: Final = "1|"
_OTHER_RANK: Final = "0|"


class RosterEntry(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One attendee of one JTE event, with the orders that decide each part (encoded without
    the parts still at their defaults: most are, and the entry is stored for every period)."""

    slug: str
    attendee_id: str
    first_seen_at: datetime
    fields: dict[str, Any] = {}
    field_orders: dict[str, str] = {}
    profile_order: str | None = None
    registered_at: datetime | None = None
    deleted_order: str | None = None
    deleted_at: datetime | None = None
    move_order: str | None = None
    move: Literal["in", "out", "deleted"] | None = None
    last_check_in_at: datetime | None = None
    last_check_out_at: datetime | None = None
    payment_order: str | None = None
    paid_at: datetime | None = None
    amount: Decimal | None = None
    currency: str | None = None
    method: str | None = None
    last_position: int = 0

    @property
    def status(self) -> Status:
        if self.deleted_order is not None and (
            self.profile_order is None or self.deleted_order > self.profile_order
        ):
            return "deleted"
        return "registered" if self.profile_order is not None else "unregistered"

    @property
    def inside(self) -> bool:
        return self.move == "in"

    @property
    def paid(self) -> bool:
        return self.payment_order is not None


def apply(entry: RosterEntry | None, event: AttendeeEvent) -> RosterEntry:
    """The entry after one more event (the same event twice changes nothing)."""
    if entry is None:
        entry = RosterEntry(slug=event.slug, attendee_id=event.attendee_id, first_seen_at=event.at)
    else:
        entry = msgspec.structs.replace(
            entry, fields=dict(entry.fields), field_orders=dict(entry.field_orders)
        )
    apply_owned(entry, event)
    return entry


def apply_owned(entry: RosterEntry, event: AttendeeEvent) -> None:
    """`apply`, changing `entry` itself: for an entry only its caller holds (a fold's own),
    which saves copying it at every event. An event that raises changes nothing."""
    # The one step that can fail, before any change.
    payment = _payment(entry, event) if event.event_type == PAYMENT_CONFIRMED else None
    if event.at < entry.first_seen_at:
        entry.first_seen_at = event.at
    if event.position > entry.last_position:
        entry.last_position = event.position
    if event.event_type == ERASED:
        entry.fields, entry.field_orders = {}, {}
        return
    _merge_fields(entry, event)
    if event.event_type in PROFILE_EVENTS:
        _profile(entry, event)
    elif event.event_type == DELETED:
        _deleted(entry, event)
    elif event.event_type in (CHECKED_IN, CHECKED_OUT):
        _moved(entry, event)
    elif payment is not None:
        entry.payment_order = event.order
        entry.paid_at = event.at
        entry.amount, entry.currency = payment.amount, payment.currency
        entry.method = payment.method


def scrubbed(entry: RosterEntry) -> RosterEntry:
    """The entry without its person: no name, email or form field is kept; status, presence
    and payment (which derive from no personal field) stay as they are."""
    return msgspec.structs.replace(entry, fields={}, field_orders={})


def fold(
    events: Iterable[AttendeeEvent], entries: dict[tuple[str, str], RosterEntry] | None = None
) -> dict[tuple[str, str], RosterEntry]:
    """Apply events to a roster keyed by (JTE event slug, attendee id)."""
    roster = dict(entries or {})
    for event in events:
        key = (event.slug, event.attendee_id)
        roster[key] = apply(roster.get(key), event)
    return roster


def _merge_fields(entry: RosterEntry, event: AttendeeEvent) -> None:
    rank = _PROFILE_RANK if event.event_type in PROFILE_EVENTS else _OTHER_RANK
    order = rank + event.order
    fields, orders = entry.fields, entry.field_orders
    for name, value in event.attendee.items():
        if order > orders.get(name, ""):
            fields[name] = value
            orders[name] = order


def _profile(entry: RosterEntry, event: AttendeeEvent) -> None:
    if entry.profile_order is None or event.order > entry.profile_order:
        entry.profile_order = event.order
    if entry.registered_at is None or event.at < entry.registered_at:
        entry.registered_at = event.at


def _deleted(entry: RosterEntry, event: AttendeeEvent) -> None:
    if entry.deleted_order is None or event.order > entry.deleted_order:
        entry.deleted_order = event.order
        entry.deleted_at = event.at
    _move(entry, event, "deleted")


def _moved(entry: RosterEntry, event: AttendeeEvent) -> None:
    if event.event_type == CHECKED_IN:
        if entry.last_check_in_at is None or event.at > entry.last_check_in_at:
            entry.last_check_in_at = event.at
        _move(entry, event, "in")
    else:
        if entry.last_check_out_at is None or event.at > entry.last_check_out_at:
            entry.last_check_out_at = event.at
        _move(entry, event, "out")


def _move(entry: RosterEntry, event: AttendeeEvent, move: Literal["in", "out", "deleted"]) -> None:
    if entry.move_order is None or event.order > entry.move_order:
        entry.move_order = event.order
        entry.move = move


def _payment(entry: RosterEntry, event: AttendeeEvent) -> LedgerEntry | None:
    """The payment a confirmation records, if it is later than the entry's and one the ledger
    can record: one it cannot (it is dead-lettered there) is not one here either, so the
    roster never claims money the ledger does not hold."""
    if entry.payment_order is not None and event.order <= entry.payment_order:
        return None
    try:
        return ledger_entry(event)
    except PaymentError:
        return None


class Period(msgspec.Struct, kw_only=True):
    """An attendee's entry as it stood from `since` (an occurrence time) until the next
    period's `since`: the fold of exactly the deliveries that had occurred by then."""

    since: datetime
    entry: RosterEntry


def advance(periods: list[Period], event: AttendeeEvent) -> list[Period]:
    """An attendee's periods after one more event, whatever order events arrive in: it opens a
    period at its occurrence time (unless one begins then) from the period in force before,
    and joins that one and every later one. An erasure scrubs every period as it stands (what
    was folded before it can no longer be read); what is folded after it joins them as usual,
    as with the roster's entry (folds go in store order).

    `periods`, in time order, must hold the period in force at `event.at` (if any) and every
    later one; the earlier ones may be left out (an erasure needs them all)."""
    erasure = event.event_type == ERASED
    at = event.at
    i = bisect_left([p.since for p in periods], at)
    before = periods[:i]
    out = [Period(since=p.since, entry=scrubbed(p.entry)) for p in before] if erasure else before
    if not (i < len(periods) and periods[i].since == at) and (i > 0 or not erasure):
        # An erasure before any delivery makes no period, as it makes no roster row.
        out.append(Period(since=at, entry=apply(periods[i - 1].entry if i else None, event)))
    out.extend(Period(since=p.since, entry=apply(p.entry, event)) for p in periods[i:])
    return out
