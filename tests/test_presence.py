"""Presence and occupancy: the in/out state machine per attendee, and occupancy as a step function.

Expected values are worked out by hand from the scenario below, not from the code.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from domain.events import CHECKED_IN, CHECKED_OUT, DELETED, REGISTERED, AttendeeEvent
from domain.presence import Change, add, changes, presence
from tests.events_factory import SLUG, all_changes, at, key, make_event, moves_of, presences
from tests.reference import Bucket, inside_at, peak, timeline

# --- One attendee: the state machine -------------------------------------------------------------


def test_a_check_in_enters_someone_outside() -> None:
    p = presences([make_event(CHECKED_IN, when=at(9))])[(SLUG, "a-1")]
    assert p.inside
    assert p.entered_at == at(9)
    assert p.stays == ((at(9), None),)
    assert (p.check_ins, p.repeated_check_ins) == (1, 0)
    assert p.first_in_at == p.last_in_at == at(9)


def test_a_check_in_of_someone_inside_changes_nothing_but_is_counted() -> None:
    events = [make_event(CHECKED_IN, when=at(9)), make_event(CHECKED_IN, when=at(9, 30))]
    p = presences(events)[(SLUG, "a-1")]
    assert p.inside
    # The stay started at the first check-in; the repeat does not restart it.
    assert p.entered_at == at(9)
    assert p.stays == ((at(9), None),)
    assert (p.check_ins, p.repeated_check_ins) == (2, 1)
    assert p.last_in_at == at(9, 30)
    assert changes(p) == [Change(at(9), +1)]


def test_a_check_out_makes_someone_inside_leave() -> None:
    events = [make_event(CHECKED_IN, when=at(9)), make_event(CHECKED_OUT, when=at(10))]
    p = presences(events)[(SLUG, "a-1")]
    assert not p.inside
    assert p.entered_at is None
    assert p.stays == ((at(9), at(10)),)
    assert (p.check_outs, p.stray_check_outs) == (1, 0)
    assert p.last_out_at == at(10)
    assert changes(p) == [Change(at(9), +1), Change(at(10), -1)]


def test_a_check_out_of_someone_outside_changes_nothing_but_is_counted() -> None:
    events = [
        make_event(CHECKED_IN, when=at(9)),
        make_event(CHECKED_OUT, when=at(10)),
        make_event(CHECKED_OUT, when=at(10, 5)),
    ]
    p = presences(events)[(SLUG, "a-1")]
    assert not p.inside
    assert p.stays == ((at(9), at(10)),)
    assert (p.check_outs, p.stray_check_outs) == (2, 1)
    assert p.last_out_at == at(10, 5)


def test_a_check_out_of_someone_never_inside_is_a_stray() -> None:
    p = presences([make_event(CHECKED_OUT, when=at(9))])[(SLUG, "a-1")]
    assert not p.inside
    assert not p.ever_inside
    assert (p.check_outs, p.stray_check_outs) == (1, 1)
    assert changes(p) == []


def test_a_deletion_makes_someone_inside_leave() -> None:
    events = [make_event(CHECKED_IN, when=at(9)), make_event(DELETED, when=at(10))]
    p = presences(events)[(SLUG, "a-1")]
    assert not p.inside
    assert p.stays == ((at(9), at(10)),)
    # A deletion is neither a check-out nor a stray.
    assert (p.check_outs, p.stray_check_outs) == (0, 0)


def test_a_deletion_of_someone_outside_changes_nothing() -> None:
    events = [
        make_event(CHECKED_IN, when=at(9)),
        make_event(CHECKED_OUT, when=at(10)),
        make_event(DELETED, when=at(11)),
        make_event(CHECKED_OUT, when=at(12)),
    ]
    p = presences(events)[(SLUG, "a-1")]
    assert p.stays == ((at(9), at(10)),)
    assert (p.check_outs, p.stray_check_outs) == (2, 1)


def test_profile_and_payment_events_are_not_moves() -> None:
    events = [make_event(REGISTERED, when=at(8)), make_event(CHECKED_IN, "a-2", at(9))]
    assert set(moves_of(events)) == {(SLUG, "a-2")}


def test_re_entries_make_separate_stays() -> None:
    events = [
        make_event(CHECKED_IN, when=at(9)),
        make_event(CHECKED_OUT, when=at(10)),
        make_event(CHECKED_IN, when=at(11)),
    ]
    p = presences(events)[(SLUG, "a-1")]
    assert p.inside
    assert p.entered_at == at(11)
    assert p.stays == ((at(9), at(10)), (at(11), None))
    assert (p.first_in_at, p.last_in_at, p.last_out_at) == (at(9), at(11), at(10))
    assert (p.check_ins, p.check_outs, p.repeated_check_ins, p.stray_check_outs) == (2, 1, 0, 0)
    assert changes(p) == [Change(at(9), +1), Change(at(10), -1), Change(at(11), +1)]


def test_a_late_check_out_lands_where_it_belongs() -> None:
    first_in = make_event(CHECKED_IN, when=at(9))
    second_in = make_event(CHECKED_IN, when=at(11))
    late_out = make_event(CHECKED_OUT, when=at(10))

    before = presence(moves_of([first_in, second_in])[(SLUG, "a-1")])
    # Until the check-out arrives, 11:00 looks like a repeat of someone inside since 9:00.
    assert before.stays == ((at(9), None),)
    assert before.repeated_check_ins == 1

    moves = add(moves_of([first_in, second_in])[(SLUG, "a-1")], late_out)
    after = presence(moves)
    assert after.stays == ((at(9), at(10)), (at(11), None))
    assert after.repeated_check_ins == 0
    assert after.stray_check_outs == 0
    assert after.entered_at == at(11)
    assert inside_at(changes(after), at(10, 30)) == 0


def test_moves_within_one_second_keep_their_time_order() -> None:
    # JTE may send millisecond timestamps: 09:00:00.5 is after 09:00:00, whatever the keys.
    check_in = make_event(CHECKED_IN, when=at(9), delivery_key=key(2))
    check_out = make_event(
        CHECKED_OUT, when=at(9) + timedelta(milliseconds=500), delivery_key=key(1)
    )
    p = presences([check_out, check_in])[(SLUG, "a-1")]
    assert not p.inside
    assert p.stays == ((at(9), at(9) + timedelta(milliseconds=500)),)


def test_later_means_later_in_time_whatever_the_utc_offset() -> None:
    # 10:30 at +02:00 is 08:30 UTC: before a 09:00 UTC check-in, although its wall clock is later.
    warsaw = timezone(timedelta(hours=2))
    check_in = make_event(CHECKED_IN, when=at(9), delivery_key=key(1))
    check_out = make_event(
        CHECKED_OUT, when=datetime(2026, 5, 14, 10, 30, tzinfo=warsaw), delivery_key=key(2)
    )
    p = presences([check_in, check_out])[(SLUG, "a-1")]
    assert p.inside
    assert p.stray_check_outs == 1


def test_adding_the_same_delivery_again_changes_nothing() -> None:
    check_in = make_event(CHECKED_IN, when=at(9))
    check_out = make_event(CHECKED_OUT, when=at(10))
    once = moves_of([check_in, check_out])[(SLUG, "a-1")]
    again = add(add(once, check_in), check_out)
    assert again == once
    assert len(again.moves) == 2


# --- Occupancy: a day with several attendees -----------------------------------------------------
#
#   A  in 09:02 ............................ out 09:20
#   B  in 09:05, in 09:10 (repeat) ......... out 10:00
#   C  in 09:14:59, out 09:15, in 09:40 .... (still inside)
#   D  out 09:03 (stray)
#
# Occupancy: 0 -> 1 (09:02) -> 2 (09:05) -> 3 (09:14:59) -> 2 (09:15) -> 1 (09:20)
#            -> 2 (09:40) -> 1 (10:00)


def day() -> list[AttendeeEvent]:
    # Arrival order scrambled on purpose: presence re-reads the moves in event order.
    return [
        make_event(CHECKED_OUT, "B", at(10)),
        make_event(CHECKED_IN, "C", at(9, 40)),
        make_event(CHECKED_OUT, "D", at(9, 3)),
        make_event(CHECKED_OUT, "A", at(9, 20)),
        make_event(CHECKED_IN, "B", at(9, 10)),
        make_event(CHECKED_IN, "C", at(9, 14, 59)),
        make_event(CHECKED_IN, "A", at(9, 2)),
        make_event(CHECKED_OUT, "C", at(9, 15)),
        make_event(CHECKED_IN, "B", at(9, 5)),
    ]


def test_the_day_per_attendee() -> None:
    p = presences(day())
    assert p[(SLUG, "A")].stays == ((at(9, 2), at(9, 20)),)
    assert p[(SLUG, "B")].stays == ((at(9, 5), at(10)),)
    assert p[(SLUG, "B")].repeated_check_ins == 1
    assert p[(SLUG, "C")].stays == ((at(9, 14, 59), at(9, 15)), (at(9, 40), None))
    assert p[(SLUG, "D")].stays == ()
    assert p[(SLUG, "D")].stray_check_outs == 1


def test_the_day_changes() -> None:
    assert Counter(all_changes(day())) == Counter(
        [
            Change(at(9, 2), +1),
            Change(at(9, 20), -1),
            Change(at(9, 5), +1),
            Change(at(10), -1),
            Change(at(9, 14, 59), +1),
            Change(at(9, 15), -1),
            Change(at(9, 40), +1),
        ]
    )


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        (at(8), 0),
        (at(9, 1, 59), 0),
        (at(9, 2), 1),  # a change at the instant itself counts
        (at(9, 4), 1),
        (at(9, 5), 2),
        (at(9, 14, 59), 3),
        (at(9, 15), 2),
        (at(9, 30), 1),
        (at(9, 40), 2),
        (at(10), 1),
        (at(23, 59), 1),  # C's stay is still open
    ],
)
def test_inside_at_any_instant(instant: datetime, expected: int) -> None:
    assert inside_at(all_changes(day()), instant) == expected


def test_peak_is_the_highest_occupancy_and_when_it_was_first_reached() -> None:
    assert peak(all_changes(day())) == (3, at(9, 14, 59))


def test_peak_reports_the_first_time_a_level_was_reached() -> None:
    events = [
        make_event(CHECKED_IN, "P", at(11)),
        make_event(CHECKED_OUT, "P", at(11, 30)),
        make_event(CHECKED_IN, "Q", at(9)),
        make_event(CHECKED_OUT, "Q", at(9, 30)),
    ]
    assert peak(all_changes(events)) == (1, at(9))


def test_at_one_instant_departures_count_before_arrivals() -> None:
    # X leaves at 10:00 as Y arrives: nobody saw two people inside.
    events = [
        make_event(CHECKED_IN, "Y", at(10)),
        make_event(CHECKED_OUT, "X", at(10)),
        make_event(CHECKED_IN, "X", at(9)),
    ]
    steps = all_changes(events)
    assert peak(steps) == (1, at(9))
    assert peak(list(reversed(steps))) == (1, at(9))
    assert inside_at(steps, at(10)) == 1


def test_peak_of_an_empty_day_is_zero_and_never() -> None:
    assert peak([]) == (0, None)
    assert peak(all_changes([make_event(CHECKED_OUT, "D", at(9))])) == (0, None)


def bucket(hour: int, minute: int, entered: int, exited: int, inside: int) -> Bucket:
    return Bucket(start=at(hour, minute), entered=entered, exited=exited, inside=inside)


def test_timeline_in_five_minute_buckets() -> None:
    result = timeline(all_changes(day()), at(9), at(10, 5), timedelta(minutes=5))
    assert result == [
        bucket(9, 0, 1, 0, 1),
        bucket(9, 5, 1, 0, 2),  # B at exactly 09:05 belongs to the bucket starting then
        bucket(9, 10, 1, 0, 3),
        bucket(9, 15, 0, 1, 2),
        bucket(9, 20, 0, 1, 1),
        bucket(9, 25, 0, 0, 1),
        bucket(9, 30, 0, 0, 1),
        bucket(9, 35, 0, 0, 1),
        bucket(9, 40, 1, 0, 2),
        bucket(9, 45, 0, 0, 2),
        bucket(9, 50, 0, 0, 2),
        bucket(9, 55, 0, 0, 2),
        bucket(10, 0, 0, 1, 1),
    ]


def test_timeline_in_fifteen_minute_buckets() -> None:
    result = timeline(all_changes(day()), at(9), at(10), timedelta(minutes=15))
    assert result == [
        bucket(9, 0, 3, 0, 3),
        bucket(9, 15, 0, 2, 1),
        bucket(9, 30, 1, 0, 2),
        bucket(9, 45, 0, 0, 2),
    ]


def test_timeline_in_hour_buckets() -> None:
    result = timeline(all_changes(day()), at(8), at(11), timedelta(hours=1))
    assert result == [
        bucket(8, 0, 0, 0, 0),
        bucket(9, 0, 4, 2, 2),
        bucket(10, 0, 0, 1, 1),
    ]


def test_timeline_starting_mid_day_carries_who_was_already_inside() -> None:
    result = timeline(all_changes(day()), at(9, 15), at(9, 45), timedelta(minutes=15))
    assert result == [bucket(9, 15, 0, 2, 1), bucket(9, 30, 1, 0, 2)]


def test_timeline_after_everything_shows_the_open_stay() -> None:
    result = timeline(all_changes(day()), at(12), at(14), timedelta(hours=1))
    assert result == [bucket(12, 0, 0, 0, 1), bucket(13, 0, 0, 0, 1)]


def test_timeline_inside_agrees_with_inside_at_each_bucket_end() -> None:
    steps = all_changes(day())
    step = timedelta(minutes=5)
    for b in timeline(steps, at(8), at(11), step):
        just_before_end = b.start + step - timedelta(microseconds=1)
        assert b.inside == inside_at(steps, just_before_end), b.start


def test_presence_keeps_its_event_and_attendee() -> None:
    # Killed mutants (scripts/mutation.py): presence and its moves lost their JTE event's slug.
    events = [make_event(CHECKED_IN, "b-7", at(9), slug="autumn")]
    moves = add(None, events[0])
    assert (moves.slug, moves.attendee_id) == ("autumn", "b-7")
    assert (presence(moves).slug, presence(moves).attendee_id) == ("autumn", "b-7")
    assert (add(moves, make_event(CHECKED_OUT, "b-7", at(10), slug="autumn")).slug) == "autumn"
