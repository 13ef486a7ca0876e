"""The roster fold, one rule of DESIGN.md's "The views and their rules" at a time.

Most tests feed the deliveries in an arrival order that differs from their occurrence order,
because that is the case the rules exist for: "later" means later by occurrence time.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import msgspec
import pytest

from domain.events import (
    CHECKED_IN,
    CHECKED_OUT,
    DELETED,
    ERASED,
    IMPORTED,
    PAYMENT_CONFIRMED,
    REGISTERED,
    UPDATED,
    AttendeeEvent,
)
from domain.roster import RosterEntry, apply, apply_owned, fold
from tests.events_factory import SLUG, at, delivered, key, make_event, paying

PROFILE_TYPES = [REGISTERED, IMPORTED, UPDATED]


def entry_of(events: list[AttendeeEvent], attendee_id: str = "a-1") -> RosterEntry:
    return fold(events)[(SLUG, attendee_id)]


# --- Registered, Imported, Updated -------------------------------------------------------------


@pytest.mark.parametrize("event_type", PROFILE_TYPES)
def test_any_profile_event_creates_an_unknown_attendee(event_type: str) -> None:
    event = make_event(
        event_type, "a-7", at(8, 30), fields={"email": "ola@example.com", "firstName": "Ola"}
    )
    entry = entry_of([event], "a-7")
    assert entry.status == "registered"
    assert entry.fields == {"id": "a-7", "email": "ola@example.com", "firstName": "Ola"}
    assert entry.registered_at == at(8, 30)
    assert entry.first_seen_at == at(8, 30)
    assert not entry.inside
    assert not entry.paid


def test_an_import_updates_an_existing_attendee() -> None:
    registered = make_event(
        REGISTERED, when=at(8), fields={"email": "ola@example.com", "company": "Acme"}
    )
    imported = make_event(IMPORTED, when=at(9), fields={"company": "Globex", "ticket": "VIP"})
    entry = entry_of([registered, imported])
    assert entry.status == "registered"
    # The import changed what it carried and kept the rest; registration time is the first one.
    assert entry.fields == {
        "id": "a-1",
        "email": "ola@example.com",
        "company": "Globex",
        "ticket": "VIP",
    }
    assert entry.registered_at == at(8)


def test_the_latest_delivery_wins_whatever_the_arrival_order() -> None:
    registered = make_event(REGISTERED, when=at(8), fields={"email": "old@example.com"})
    updated = make_event(UPDATED, when=at(10), fields={"email": "new@example.com"})
    # The update arrives first, the (earlier) registration after it.
    entry = entry_of([updated, registered])
    assert entry.fields["email"] == "new@example.com"
    assert entry.registered_at == at(8)


def test_a_field_keeps_its_value_from_the_latest_delivery_carrying_it() -> None:
    registered = make_event(REGISTERED, when=at(8), fields={"firstName": "Ola", "company": "Acme"})
    # A later update that does not mention `company` must not erase it.
    updated = make_event(UPDATED, when=at(9), fields={"firstName": "Aleksandra"})
    entry = entry_of([registered, updated])
    assert entry.fields["firstName"] == "Aleksandra"
    assert entry.fields["company"] == "Acme"


def test_profile_fields_outrank_fields_carried_by_other_event_types() -> None:
    registered = make_event(REGISTERED, when=at(8), fields={"firstName": "Ola"})
    # A later check-in carries a stale name and a field the profile never had.
    checked_in = make_event(
        CHECKED_IN, when=at(9), fields={"firstName": "OLA (badge)", "gate": "B"}
    )
    entry = entry_of([registered, checked_in])
    assert entry.fields["firstName"] == "Ola"
    assert entry.fields["gate"] == "B"


def test_fields_of_other_event_types_fill_in_a_walk_in_until_the_profile_arrives() -> None:
    checked_in = make_event(CHECKED_IN, when=at(9), fields={"firstName": "Walk-in"})
    assert entry_of([checked_in]).fields["firstName"] == "Walk-in"
    # The registration (earlier in time, later in arrival) still outranks the check-in's name.
    registered = make_event(REGISTERED, when=at(7), fields={"firstName": "Jan"})
    assert entry_of([checked_in, registered]).fields["firstName"] == "Jan"


def test_registered_at_is_the_earliest_profile_event() -> None:
    events = [
        make_event(UPDATED, when=at(11)),
        make_event(IMPORTED, when=at(9)),
        make_event(REGISTERED, when=at(10)),
    ]
    assert entry_of(events).registered_at == at(9)


def test_the_same_delivery_twice_changes_nothing() -> None:
    registered = make_event(REGISTERED, when=at(8), fields={"email": "a@example.com"})
    checked_in = make_event(CHECKED_IN, when=at(9))
    once = entry_of([registered, checked_in])
    twice = entry_of([registered, checked_in, registered, checked_in])
    assert msgspec.structs.asdict(twice) == msgspec.structs.asdict(once)


# --- Deleted -------------------------------------------------------------------------------------


def test_a_deleted_attendee_is_kept_with_its_history() -> None:
    registered = make_event(REGISTERED, when=at(8), fields={"email": "ola@example.com"})
    deleted = make_event(DELETED, when=at(12))
    entry = entry_of([registered, deleted])
    assert entry.status == "deleted"
    assert entry.deleted_at == at(12)
    assert entry.fields["email"] == "ola@example.com"
    assert entry.registered_at == at(8)


@pytest.mark.parametrize("event_type", PROFILE_TYPES)
def test_a_later_profile_event_revives_a_deleted_attendee(event_type: str) -> None:
    registered = make_event(REGISTERED, when=at(8))
    deleted = make_event(DELETED, when=at(12))
    revived = make_event(event_type, when=at(13), fields={"company": "Back again"})
    # Arrival order reversed: the revival is processed before the deletion it overrides.
    entry = entry_of([revived, deleted, registered])
    assert entry.status == "registered"
    assert entry.fields["company"] == "Back again"
    # The deletion stays on record as history.
    assert entry.deleted_at == at(12)


@pytest.mark.parametrize("event_type", PROFILE_TYPES)
def test_an_earlier_profile_event_arriving_late_does_not_revive(event_type: str) -> None:
    registered = make_event(REGISTERED, when=at(8))
    deleted = make_event(DELETED, when=at(12))
    late = make_event(event_type, when=at(11), fields={"company": "Acme"})
    entry = entry_of([registered, deleted, late])
    assert entry.status == "deleted"
    # Its fields still count: it is the latest profile delivery carrying `company`.
    assert entry.fields["company"] == "Acme"


def test_deletion_of_someone_inside_makes_them_leave() -> None:
    events = [
        make_event(REGISTERED, when=at(8)),
        make_event(CHECKED_IN, when=at(9)),
        make_event(DELETED, when=at(10)),
    ]
    entry = entry_of(events)
    assert not entry.inside
    assert entry.status == "deleted"


def test_deletion_is_not_a_refund() -> None:
    events = [
        make_event(REGISTERED, when=at(8)),
        make_event(PAYMENT_CONFIRMED, when=at(9), fields=paying("349.00", "PLN")),
        make_event(DELETED, when=at(10)),
    ]
    entry = entry_of(events)
    assert entry.status == "deleted"
    assert entry.paid
    assert entry.amount == Decimal("349.00")


def test_a_deletion_of_an_unknown_attendee_is_recorded() -> None:
    entry = entry_of([make_event(DELETED, "ghost", at(10))], "ghost")
    assert entry.status == "deleted"
    assert entry.deleted_at == at(10)
    assert entry.registered_at is None


# --- CheckedIn, CheckedOut -----------------------------------------------------------------------


def test_a_check_in_marks_the_attendee_inside_with_its_time() -> None:
    entry = entry_of([make_event(REGISTERED, when=at(8)), make_event(CHECKED_IN, when=at(9))])
    assert entry.inside
    assert entry.last_check_in_at == at(9)
    assert entry.last_check_out_at is None


def test_a_repeated_check_in_keeps_the_attendee_inside_and_moves_the_time() -> None:
    events = [make_event(CHECKED_IN, when=at(9)), make_event(CHECKED_IN, when=at(9, 30))]
    entry = entry_of(list(reversed(events)))
    assert entry.inside
    assert entry.last_check_in_at == at(9, 30)


def test_a_check_out_marks_the_attendee_outside_with_its_time() -> None:
    events = [make_event(CHECKED_IN, when=at(9)), make_event(CHECKED_OUT, when=at(11))]
    entry = entry_of(list(reversed(events)))
    assert not entry.inside
    assert entry.last_check_in_at == at(9)
    assert entry.last_check_out_at == at(11)


def test_a_check_out_of_someone_outside_keeps_them_outside() -> None:
    entry = entry_of([make_event(REGISTERED, when=at(8)), make_event(CHECKED_OUT, when=at(9))])
    assert not entry.inside
    assert entry.last_check_out_at == at(9)


def test_a_late_check_out_lands_before_a_later_check_in() -> None:
    first_in = make_event(CHECKED_IN, when=at(9))
    second_in = make_event(CHECKED_IN, when=at(11))
    out = make_event(CHECKED_OUT, when=at(10))
    # The 10:00 check-out arrives last; the 11:00 check-in is still the latest move.
    entry = entry_of([first_in, second_in, out])
    assert entry.inside
    assert entry.last_check_in_at == at(11)
    assert entry.last_check_out_at == at(10)


# --- PaymentConfirmed ----------------------------------------------------------------------------


def test_a_payment_marks_the_attendee_paid_with_amount_currency_method_and_time() -> None:
    payment = make_event(
        PAYMENT_CONFIRMED, when=at(9, 12), fields=paying("349.00", "pln", "P24", "P24-1")
    )
    entry = entry_of([make_event(REGISTERED, when=at(8)), payment])
    assert entry.paid
    assert entry.amount == Decimal("349.00")
    assert str(entry.amount) == "349.00"
    assert entry.currency == "PLN"
    assert entry.method == "przelewy24"
    assert entry.paid_at == at(9, 12)


def test_the_latest_payment_decides_the_roster_whatever_the_arrival_order() -> None:
    earlier = make_event(PAYMENT_CONFIRMED, when=at(9), fields=paying("100.00", "EUR", "payu"))
    later = make_event(PAYMENT_CONFIRMED, when=at(10), fields=paying("349.00", "PLN", "tpay"))
    entry = entry_of([later, earlier])
    assert (entry.amount, entry.currency, entry.method, entry.paid_at) == (
        Decimal("349.00"),
        "PLN",
        "tpay",
        at(10),
    )


def test_an_unusable_payment_is_no_payment() -> None:
    # The ledger cannot record it (no decimal amount), so the roster does not claim it either.
    payment = make_event(
        PAYMENT_CONFIRMED, when=at(9), fields=paying("three hundred", "PLN", "bank transfer")
    )
    entry = entry_of([payment])
    assert not entry.paid
    assert (entry.amount, entry.currency, entry.method, entry.paid_at) == (None, None, None, None)


@pytest.mark.parametrize("arrival", ["in order", "reversed"])
def test_an_unusable_payment_leaves_the_last_recorded_one(arrival: str) -> None:
    recorded = make_event(PAYMENT_CONFIRMED, when=at(9), fields=paying("349.00", "PLN", "payu"))
    unusable = make_event(PAYMENT_CONFIRMED, when=at(10), fields=paying("349.00", "P L N", "tpay"))
    events = [recorded, unusable] if arrival == "in order" else [unusable, recorded]
    entry = entry_of(events)
    assert entry.paid
    assert (entry.amount, entry.currency, entry.method, entry.paid_at) == (
        Decimal("349.00"),
        "PLN",
        "payu",
        at(9),
    )
    assert entry.fields["payment"]["currency"] == "P L N"  # its fields still count as sent


# --- Attendees never registered ------------------------------------------------------------------


def test_a_check_in_before_any_registration_counts() -> None:
    entry = entry_of([make_event(CHECKED_IN, "walk-in", at(9))], "walk-in")
    assert entry.status == "unregistered"
    assert entry.inside
    assert entry.last_check_in_at == at(9)
    assert entry.registered_at is None


def test_a_payment_before_any_registration_counts() -> None:
    payment = make_event(PAYMENT_CONFIRMED, "p-1", at(9), fields=paying("50", "EUR"))
    entry = entry_of([payment], "p-1")
    assert entry.status == "unregistered"
    assert entry.paid
    assert (entry.amount, entry.currency) == (Decimal("50"), "EUR")


def test_a_registration_arriving_after_the_check_in_registers_and_keeps_them_inside() -> None:
    checked_in = make_event(CHECKED_IN, when=at(9))
    registered = make_event(REGISTERED, when=at(7), fields={"email": "late@example.com"})
    entry = entry_of([checked_in, registered])
    assert entry.status == "registered"
    assert entry.inside
    assert entry.first_seen_at == at(7)


# --- Deliveries without an occurrence time -------------------------------------------------------


def test_without_occurred_at_the_receipt_order_decides() -> None:
    received = at(9)
    registered = delivered(
        {"event": REGISTERED, "attendee": {"id": "u-1", "email": "first@example.com"}},
        received,
    )
    updated = delivered(
        {"event": UPDATED, "attendee": {"id": "u-1", "email": "second@example.com"}},
        received + timedelta(seconds=1),
    )
    checked_in = delivered(
        {"event": CHECKED_IN, "attendee": {"id": "u-1"}}, received + timedelta(seconds=2)
    )
    checked_out = delivered(
        {"event": CHECKED_OUT, "attendee": {"id": "u-1"}}, received + timedelta(seconds=3)
    )
    assert not registered.timed
    assert registered.at == received
    entry = fold([checked_out, updated, checked_in, registered])[(SLUG, "u-1")]
    assert entry.fields["email"] == "second@example.com"
    assert not entry.inside
    assert entry.registered_at == received


def test_without_occurred_at_the_same_receipt_instant_falls_back_to_position() -> None:
    received = at(9)
    # Position 1 is a check-in, position 2 (arrived later) a check-out; the check-out's key
    # happens to sort first.
    checked_in = delivered(
        {"event": CHECKED_IN, "attendee": {"id": "u-2"}},
        received,
        position=1,
        delivery_key=key(2),
    )
    checked_out = delivered(
        {"event": CHECKED_OUT, "attendee": {"id": "u-2"}},
        received,
        position=2,
        delivery_key=key(1),
    )
    entry = fold([checked_in, checked_out])[(SLUG, "u-2")]
    assert not entry.inside


# --- The fold as a whole -------------------------------------------------------------------------


def test_folding_more_events_does_not_change_the_roster_it_started_from() -> None:
    # The projections keep the previous batch's roster; a later batch must not alter it in place.
    first = fold([make_event(REGISTERED, when=at(8), fields={"email": "a@example.com"})])
    snapshot = msgspec.structs.asdict(first[(SLUG, "a-1")])
    second = fold(
        [
            make_event(UPDATED, when=at(9), fields={"email": "b@example.com"}),
            make_event(CHECKED_IN, when=at(10)),
            make_event(PAYMENT_CONFIRMED, when=at(11), fields=paying()),
        ],
        first,
    )
    assert msgspec.structs.asdict(first[(SLUG, "a-1")]) == snapshot
    assert second[(SLUG, "a-1")].fields["email"] == "b@example.com"


def test_attendees_are_kept_apart_by_event_slug_and_id() -> None:
    events = [
        make_event(REGISTERED, "a-1", at(8), slug="conf-a"),
        make_event(CHECKED_IN, "a-1", at(9), slug="conf-b"),
        make_event(CHECKED_IN, "a-2", at(9), slug="conf-a"),
    ]
    roster = fold(events)
    assert set(roster) == {("conf-a", "a-1"), ("conf-b", "a-1"), ("conf-a", "a-2")}
    assert roster[("conf-a", "a-1")].status == "registered"
    assert not roster[("conf-a", "a-1")].inside
    assert roster[("conf-b", "a-1")].status == "unregistered"
    assert roster[("conf-b", "a-1")].inside


def test_apply_starts_an_entry_from_nothing() -> None:
    entry = apply(None, make_event(CHECKED_OUT, "x", at(9)))
    assert (entry.slug, entry.attendee_id, entry.first_seen_at) == (SLUG, "x", at(9))
    assert not entry.inside


def test_last_position_is_the_highest_position_applied_whatever_the_order() -> None:
    # Killed mutant (scripts/mutation.py): the entry's last position was not kept.
    late = make_event(REGISTERED, when=at(9), position=40)
    early = make_event(CHECKED_IN, when=at(10), position=7)
    assert entry_of([late, early]).last_position == 40
    assert entry_of([early]).last_position == 7


def _mixed_day() -> list[AttendeeEvent]:
    return [
        make_event(CHECKED_IN, when=at(10), fields={"firstName": "Walk-in"}),
        make_event(REGISTERED, when=at(8), fields={"firstName": "Ola", "email": "o@example.com"}),
        make_event(PAYMENT_CONFIRMED, when=at(11), fields=paying(reference="r-1")),
        make_event(UPDATED, when=at(12), fields={"email": "ola@example.com", "company": "X"}),
        make_event(PAYMENT_CONFIRMED, when=at(9), fields=paying(amount="abc")),
        make_event(CHECKED_OUT, when=at(13)),
        make_event(DELETED, when=at(14)),
        make_event(ERASED, when=at(15)),
        make_event(IMPORTED, when=at(16), fields={"lastName": "Nowak"}),
    ]


def test_apply_owned_changes_the_entry_as_apply_makes_a_new_one() -> None:
    # The bulk rebuild folds each attendee in place; a row must be the same bytes either way.
    events = _mixed_day()
    copied = apply(None, events[0])
    owned = apply(None, events[0])
    for event in events[1:]:
        copied = apply(copied, event)
        apply_owned(owned, event)
        assert msgspec.json.encode(owned) == msgspec.json.encode(copied)


def test_an_event_that_fails_in_apply_owned_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entry = apply(None, make_event(REGISTERED, when=at(8), fields={"firstName": "Ola"}))
    before = msgspec.json.encode(entry)

    def broken(event: AttendeeEvent) -> None:
        raise RecursionError("a payment too deep to read")

    monkeypatch.setattr("domain.roster.ledger_entry", broken)
    payment = make_event(PAYMENT_CONFIRMED, when=at(9), fields={"firstName": "Ala", **paying()})
    with pytest.raises(RecursionError):
        apply_owned(entry, payment)
    assert msgspec.json.encode(entry) == before
