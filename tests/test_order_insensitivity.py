"""Order-insensitive views (DESIGN.md): where deliveries carry occurrence times, the same set of
deliveries, in any arrival order and with any duplicates, gives the same views.

Each property builds a set of deliveries, then compares the views of a canonical order with the
views of a random arrival order that also repeats some deliveries (same delivery key, as a
retried webhook is). A last property checks presence against a small reference implementation
written here, so that the tests do not merely restate domain.presence.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

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
from domain.ledger import merge
from domain.presence import Change, Presence, add, changes, presence
from domain.roster import Period, RosterEntry, advance, fold
from tests.events_factory import DAY, ledger_entries, make_event, moves_of, presences
from tests.reference import inside_at, peak, timeline, totals

ALL_TYPES = [REGISTERED, IMPORTED, UPDATED, DELETED, CHECKED_IN, CHECKED_OUT, PAYMENT_CONFIRMED]
MOVE_TYPES = [CHECKED_IN, CHECKED_OUT, DELETED]
ATTENDEES = ["a-1", "a-2", "a-3"]
BUCKETS = [timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1)]
# Instants to sample occupancy at: the hours, and the grid instants where ties are drawn.
INSTANTS = [DAY + timedelta(hours=h) for h in range(25)] + [
    DAY + timedelta(hours=9, minutes=m) for m in (0, 1, 30)
]

# A few shared instants make simultaneous deliveries (ties broken by delivery key) common.
_GRID_SECONDS = [9 * 3600, 9 * 3600 + 60, 9 * 3600 + 1800, 12 * 3600]
_FIELDS = {
    "email": ["ola@example.com", "jan@example.com", "OLA@EXAMPLE.COM"],
    "firstName": ["Ola", "Jan", "Walk-in"],
    "company": ["Acme", "Globex", ""],
    "role": ["attendee", "speaker", "organizer", ""],
}


# --- Strategies ----------------------------------------------------------------------------------


def _amounts() -> st.SearchStrategy[object]:
    cents = st.decimals(min_value=0, max_value=100_000, places=2)
    return st.one_of(
        cents.map(str),  # a JSON string, e.g. "349.00"
        cents,  # a JSON number, as domain.interpret decodes it (Decimal)
        st.sampled_from(["349.00", "0.10", "n/a"]),  # shared amounts, and poison
    )


def _payments() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "amount": _amounts(),
            "currency": st.sampled_from(["PLN", "pln", "EUR", "usd"]),
            "method": st.sampled_from(["payu", "P24", "przelewy24", 3, "bank transfer", None]),
            # References shared between deliveries and between attendees; "" is no reference.
            "reference": st.sampled_from([None, "", "R-1", "R-2", "R-3"]),
        }
    )


@st.composite
def _delivery(draw: st.DrawFn, delivery_key: UUID, types: list[str]) -> AttendeeEvent:
    event_type = draw(st.sampled_from(types))
    second = draw(st.one_of(st.integers(0, 86_399), st.sampled_from(_GRID_SECONDS)))
    # Whole seconds mostly; sometimes a fraction, as millisecond timestamps give.
    micro = draw(st.one_of(st.just(0), st.integers(0, 999_999)))
    names = draw(st.lists(st.sampled_from(sorted(_FIELDS)), unique=True, max_size=3))
    fields: dict[str, Any] = {name: draw(st.sampled_from(_FIELDS[name])) for name in names}
    if event_type == PAYMENT_CONFIRMED:
        fields["payment"] = draw(_payments())
    return make_event(
        event_type,
        draw(st.sampled_from(ATTENDEES)),
        DAY + timedelta(seconds=second, microseconds=micro),
        fields=fields,
        delivery_key=delivery_key,
        position=draw(st.integers(1, 1_000_000)),
    )


@st.composite
def deliveries(
    draw: st.DrawFn, types: list[str] = ALL_TYPES, max_size: int = 30
) -> list[AttendeeEvent]:
    """Distinct deliveries (distinct keys), each with an occurrence time on the same day."""
    keys = draw(st.lists(st.uuids(), unique=True, max_size=max_size))
    return [draw(_delivery(k, types)) for k in keys]


@st.composite
def arrivals(draw: st.DrawFn, events: list[AttendeeEvent]) -> list[AttendeeEvent]:
    """The deliveries in any order, some of them delivered more than once."""
    repeats = draw(st.lists(st.sampled_from(events), max_size=10)) if events else []
    return draw(st.permutations(events + repeats))


def canonical(events: list[AttendeeEvent]) -> list[AttendeeEvent]:
    return sorted(events, key=lambda event: event.order)


# --- Views to compare ----------------------------------------------------------------------------


def roster_view(events: list[AttendeeEvent]) -> dict[tuple[str, str], dict[str, object]]:
    return {who: _entry_view(entry) for who, entry in fold(events).items()}


def _entry_view(entry: RosterEntry) -> dict[str, object]:
    return {
        "status": entry.status,
        "inside": entry.inside,
        "paid": entry.paid,
        # str keeps the exponent: 349.00 and 349.0 are equal Decimals, not the same amount text.
        "amount": None if entry.amount is None else str(entry.amount),
        "currency": entry.currency,
        "method": entry.method,
        "fields": entry.fields,
        "registered_at": entry.registered_at,
        "first_seen_at": entry.first_seen_at,
        "last_check_in_at": entry.last_check_in_at,
        "last_check_out_at": entry.last_check_out_at,
        "deleted_at": entry.deleted_at,
        "paid_at": entry.paid_at,
        # Everything else the entry stores (the orders deciding each part, last position).
        "all": msgspec.structs.asdict(entry),
    }


def occupancy_view(events: list[AttendeeEvent]) -> dict[str, object]:
    by_attendee = presences(events)
    steps = [step for p in by_attendee.values() for step in changes(p)]
    return {
        "presence": by_attendee,
        "changes": Counter(steps),
        "peak": peak(steps),
        "inside_at": [inside_at(steps, instant) for instant in INSTANTS],
        "timeline": [timeline(steps, DAY, DAY + timedelta(days=1), b) for b in BUCKETS],
    }


def ledger_view(events: list[AttendeeEvent]) -> dict[str, object]:
    ledger = merge(ledger_entries(events))
    return {"ledger": ledger, "totals": totals(ledger.values())}


# --- Properties ----------------------------------------------------------------------------------


@settings(max_examples=300)
@given(data=st.data(), events=deliveries())
def test_roster_is_the_same_for_any_arrival_order_and_duplicates(
    data: st.DataObject, events: list[AttendeeEvent]
) -> None:
    arrival = data.draw(arrivals(events))
    assert roster_view(arrival) == roster_view(canonical(events))


@settings(max_examples=300)
@given(data=st.data(), events=deliveries())
def test_occupancy_is_the_same_for_any_arrival_order_and_duplicates(
    data: st.DataObject, events: list[AttendeeEvent]
) -> None:
    arrival = data.draw(arrivals(events))
    assert occupancy_view(arrival) == occupancy_view(canonical(events))


@settings(max_examples=300)
@given(data=st.data(), events=deliveries())
def test_ledger_is_the_same_for_any_arrival_order_and_duplicates(
    data: st.DataObject, events: list[AttendeeEvent]
) -> None:
    arrival = data.draw(arrivals(events))
    assert ledger_view(arrival) == ledger_view(canonical(events))


@settings(max_examples=300)
@given(data=st.data(), events=deliveries())
def test_folding_in_two_batches_equals_folding_at_once(
    data: st.DataObject, events: list[AttendeeEvent]
) -> None:
    # The projections fold batch after batch onto the previous state.
    arrival = data.draw(arrivals(events))
    split = data.draw(st.integers(0, len(arrival)))
    first, second = arrival[:split], arrival[split:]

    at_once = fold(arrival)
    in_two = fold(second, fold(first))
    assert {who: _entry_view(e) for who, e in in_two.items()} == {
        who: _entry_view(e) for who, e in at_once.items()
    }

    moves = moves_of(first)
    for event in second:
        if event.event_type in MOVE_TYPES:
            who = (event.slug, event.attendee_id)
            moves[who] = add(moves.get(who), event)
    assert {who: presence(m) for who, m in moves.items()} == presences(arrival)

    ledger_in_two = merge([*merge(ledger_entries(first)).values(), *ledger_entries(second)])
    assert ledger_in_two == merge(ledger_entries(arrival))


@settings(max_examples=200)
@given(data=st.data(), events=deliveries())
def test_roster_and_presence_agree_on_who_is_inside(
    data: st.DataObject, events: list[AttendeeEvent]
) -> None:
    arrival = data.draw(arrivals(events))
    roster = fold(arrival)
    by_attendee = presences(arrival)
    for who, entry in roster.items():
        p = by_attendee.get(who)
        assert entry.inside == (p is not None and p.inside), who
        assert entry.last_check_in_at == (p.last_in_at if p else None), who
        assert entry.last_check_out_at == (p.last_out_at if p else None), who


def history_of(arrival: list[AttendeeEvent]) -> dict[tuple[str, str], list[Period]]:
    """The roster's history built as projections/roster_history.py stores it: each delivery,
    in arrival order, joins only the periods from the one in force at its time on (the view
    reads no earlier one), the earlier ones kept as they were."""
    history: dict[tuple[str, str], list[Period]] = defaultdict(list)
    for event in arrival:
        who = (event.slug, event.attendee_id)
        periods = history[who]
        kept = 0
        if event.event_type != ERASED:  # an erasure reads them all
            while kept + 1 < len(periods) and periods[kept + 1].since <= event.at:
                kept += 1
        history[who] = periods[:kept] + advance(periods[kept:], event)
    return history


def in_force(periods: list[Period], moment: datetime) -> RosterEntry | None:
    found = [p.entry for p in periods if p.since <= moment]
    return found[-1] if found else None


@settings(max_examples=300)
@given(data=st.data(), events=deliveries())
def test_the_roster_history_holds_the_fold_cut_at_every_moment(
    data: st.DataObject, events: list[AttendeeEvent]
) -> None:
    # What `as_of=` reads: at any moment, the period then in force is the roster a rebuild cut
    # there makes, whatever order (and repeats) the deliveries arrived in.
    arrival = data.draw(arrivals(events))
    history = history_of(arrival)
    times = sorted({e.at for e in events})
    moments = [DAY - timedelta(days=1), DAY + timedelta(days=2)]
    moments += [t + d for t in times for d in (timedelta(0), timedelta(microseconds=-1))]
    for moment in moments:
        cut = fold(canonical([e for e in events if e.at <= moment]))
        for who in {*cut, *history}:
            got = in_force(history.get(who, []), moment)
            expected = cut.get(who)
            assert (got and _entry_view(got)) == (expected and _entry_view(expected)), moment
        for periods in history.values():
            assert [p.since for p in periods] == sorted({p.since for p in periods})


def test_an_erasure_scrubs_every_period_even_those_before_it() -> None:
    who = "a-1"
    events = [
        make_event(REGISTERED, who, DAY + timedelta(hours=9), fields={"firstName": "Ola"}),
        make_event(UPDATED, who, DAY + timedelta(hours=10), fields={"lastName": "Nowak"}),
        make_event(ERASED, who, DAY + timedelta(hours=12)),
        make_event(UPDATED, who, DAY + timedelta(hours=11), fields={"company": "Acme"}),
    ]
    events[2] = msgspec.structs.replace(events[2], attendee={})
    periods = history_of(events)[(events[0].slug, who)]
    assert [p.since.hour for p in periods] == [9, 10, 11, 12]
    # Every period scrubbed; only a delivery that arrived after the erasure (under a new data
    # key) adds fields again, to its own period and the later ones, as it does to the roster.
    acme = {"id": who, "company": "Acme"}
    assert [p.entry.fields for p in periods] == [{}, {}, acme, acme]
    assert periods[-1].entry == fold(events)[(events[0].slug, who)]
    # An erasure ahead of any delivery makes no period, as it makes no roster row; after one
    # delivery it opens its own period, as after several.
    assert list(history_of(events[2:3]).values()) == [[]]
    after_one = history_of([events[0], events[2]])[(events[0].slug, who)]
    assert [(p.since.hour, p.entry.last_position) for p in after_one] == [
        (9, events[0].position),
        (12, events[2].position),
    ]


# --- Presence against a reference implementation -------------------------------------------------


@dataclass
class Reference:
    inside: bool
    entered_at: datetime | None
    check_ins: int
    check_outs: int
    repeated_check_ins: int
    stray_check_outs: int
    first_in_at: datetime | None
    last_in_at: datetime | None
    last_out_at: datetime | None
    stays: list[tuple[datetime, datetime | None]]


def reference_presence(events: list[AttendeeEvent]) -> dict[tuple[str, str], Reference]:
    """Replay each attendee's distinct deliveries sorted by (time, delivery key) through the
    in/out/deleted state machine: independent of order tokens, bisect and Moves."""
    distinct = {event.key: event for event in events}
    per_attendee: dict[tuple[str, str], list[AttendeeEvent]] = defaultdict(list)
    for event in distinct.values():
        if event.event_type in MOVE_TYPES:
            per_attendee[(event.slug, event.attendee_id)].append(event)
    result = {}
    for who, moves in per_attendee.items():
        moves.sort(key=lambda event: (event.at, event.key))
        since: datetime | None = None
        stays: list[tuple[datetime, datetime | None]] = []
        repeats = strays = 0
        for event in moves:
            if event.event_type == CHECKED_IN:
                if since is None:
                    since = event.at
                else:
                    repeats += 1
            elif since is not None:  # a check-out or a deletion of someone inside
                stays.append((since, event.at))
                since = None
            elif event.event_type == CHECKED_OUT:
                strays += 1
        if since is not None:
            stays.append((since, None))
        ins = [e.at for e in moves if e.event_type == CHECKED_IN]
        outs = [e.at for e in moves if e.event_type == CHECKED_OUT]
        result[who] = Reference(
            inside=since is not None,
            entered_at=since,
            check_ins=len(ins),
            check_outs=len(outs),
            repeated_check_ins=repeats,
            stray_check_outs=strays,
            first_in_at=stays[0][0] if stays else None,
            last_in_at=max(ins, default=None),
            last_out_at=max(outs, default=None),
            stays=stays,
        )
    return result


def _as_reference(p: Presence) -> Reference:
    return Reference(
        inside=p.inside,
        entered_at=p.entered_at,
        check_ins=p.check_ins,
        check_outs=p.check_outs,
        repeated_check_ins=p.repeated_check_ins,
        stray_check_outs=p.stray_check_outs,
        first_in_at=p.first_in_at,
        last_in_at=p.last_in_at,
        last_out_at=p.last_out_at,
        stays=list(p.stays),
    )


def _occupied(stays: list[tuple[datetime, datetime | None]], instant: datetime) -> int:
    """How many stays cover `instant`: entered at or before it, not yet left."""
    return sum(
        1 for entered, left in stays if entered <= instant and (left is None or instant < left)
    )


# Moves on a coarse grid (a minute, within three hours) so that simultaneous moves are frequent.
@st.composite
def _dense_moves(draw: st.DrawFn) -> list[AttendeeEvent]:
    keys = draw(st.lists(st.uuids(), unique=True, max_size=25))
    start = DAY + timedelta(hours=9)
    return [
        make_event(
            draw(st.sampled_from(MOVE_TYPES)),
            draw(st.sampled_from(ATTENDEES[:2])),
            start + timedelta(minutes=draw(st.integers(0, 180))),
            delivery_key=k,
        )
        for k in keys
    ]


@settings(max_examples=500)
@given(data=st.data(), events=_dense_moves())
def test_presence_agrees_with_a_reference_implementation(
    data: st.DataObject, events: list[AttendeeEvent]
) -> None:
    arrival = data.draw(arrivals(events))
    expected = reference_presence(events)

    actual = presences(arrival)
    assert {who: _as_reference(p) for who, p in actual.items()} == expected

    stays = [stay for ref in expected.values() for stay in ref.stays]
    steps: list[Change] = [step for p in actual.values() for step in changes(p)]
    instants = sorted({s.at for s in steps} | set(INSTANTS))
    for instant in instants:
        assert inside_at(steps, instant) == _occupied(stays, instant), instant

    # Peak: the highest occupancy over all instants, and the first instant it was reached.
    levels = [(instant, _occupied(stays, instant)) for instant in instants]
    best = max((level for _, level in levels), default=0)
    first = next((instant for instant, level in levels if level == best), None)
    assert peak(steps) == ((best, first) if best > 0 else (0, None))

    start, end = DAY + timedelta(hours=8), DAY + timedelta(hours=13)
    for size in BUCKETS:
        buckets = timeline(steps, start, end, size)
        assert [b.start for b in buckets] == [
            start + i * size for i in range(int((end - start) / size))
        ]
        for b in buckets:
            stop = b.start + size
            assert b.entered == sum(1 for entered, _ in stays if b.start <= entered < stop)
            assert b.exited == sum(
                1 for _, left in stays if left is not None and b.start <= left < stop
            )
            assert b.inside == sum(
                1 for entered, left in stays if entered < stop and (left is None or left >= stop)
            )


def test_the_reference_itself_sees_a_late_check_out() -> None:
    # A check of the checker: the hand-built case of test_presence, through the reference.
    start = DAY + timedelta(hours=9)
    events = [
        make_event(CHECKED_IN, "r", start),
        make_event(CHECKED_IN, "r", start + timedelta(hours=2)),
        make_event(CHECKED_OUT, "r", start + timedelta(hours=1)),
    ]
    ref = reference_presence(events)[(events[0].slug, "r")]
    assert ref.stays == [
        (start, start + timedelta(hours=1)),
        (start + timedelta(hours=2), None),
    ]
    assert (ref.repeated_check_ins, ref.stray_check_outs) == (0, 0)
