"""The views' own read queries against the reference model, on a real PostgreSQL.

Production computes occupancy at an instant, the peak, the timeline and the payment totals in
SQL (projections/occupancy.py, projections/payments.py). The pure tests prove their rules of
a small model (tests/reference.py); here the same scenarios are stored as deliveries, applied
by the real runner, and the serving queries must answer what the model answers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import asyncpg
import msgspec
import pytest

from domain.events import CHECKED_IN, CHECKED_OUT, DELETED, REGISTERED, UPDATED, AttendeeEvent
from projections import occupancy, payments, roster
from projections.rebuild import rebuild
from projections.runner import Runner
from service.config import EventConfig
from service.eventstore.source import SOURCE
from service.eventstore.store import DeliveryRecorded, DeliveryStore
from service.http.intake import delivery_record
from tests.events_factory import SLUG, all_changes, at, ledger_of, make_event
from tests.reference import inside_at, peak, timeline, totals
from tests.test_ledger import payments_day
from tests.test_presence import day

WIDTHS = (timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1))
EVENT = EventConfig(slug=SLUG, secrets=("unused: nothing is verified here",))


def recorded(event: AttendeeEvent) -> DeliveryRecorded:
    """The delivery JTE would have sent for `event`, as intake keeps it (for its JTE event)."""
    body = msgspec.json.encode(
        {
            "event": event.event_type,
            "id": str(event.key),
            "occurredAt": event.at.isoformat(),
            "attendee": event.attendee,
        }
    )
    config = msgspec.structs.replace(EVENT, slug=event.slug)
    return delivery_record(config, {"content-type": b"application/json"}, body, "token")


@pytest.fixture
def views_of(database_url: str) -> Callable[[list[AttendeeEvent]], None]:
    """Store the events as deliveries and apply them to the live views."""

    def apply(events: list[AttendeeEvent]) -> None:
        store = DeliveryStore(database_url)
        try:
            store.append([recorded(event) for event in events])
        finally:
            store.close()
        Runner(database_url, SOURCE).catch_up()

    return apply


async def test_occupancy_at_any_instant_and_its_peak_are_the_models(
    views_of: Callable[[list[AttendeeEvent]], None], pool: asyncpg.Pool
) -> None:
    views_of(day())
    steps = all_changes(day())
    instants = sorted({s.at for s in steps} | {at(h, m) for h in (8, 9, 10, 23) for m in (0, 59)})
    instants += [s.at - timedelta(microseconds=1) for s in steps]
    for instant in instants:
        answer = await occupancy.at(pool, SLUG, instant)
        so_far = [s for s in steps if s.at <= instant]
        assert answer.inside == inside_at(steps, instant), instant
        assert (answer.peak, answer.peak_at) == peak(so_far), instant
        assert answer.entries == sum(s.delta > 0 for s in so_far), instant
        assert answer.exits == sum(s.delta < 0 for s in so_far), instant
    now = await occupancy.now(pool, SLUG)
    assert (now.peak, now.peak_at) == peak(steps) == (3, at(9, 14, 59))
    assert now.inside == inside_at(steps, at(23, 59)) == 1


async def test_at_one_instant_departures_count_before_arrivals(
    views_of: Callable[[list[AttendeeEvent]], None], pool: asyncpg.Pool
) -> None:
    # X leaves at 10:00 as Y arrives: nobody saw two people inside (test_presence's case).
    events = [
        make_event(CHECKED_IN, "Y", at(10)),
        make_event(CHECKED_OUT, "X", at(10)),
        make_event(CHECKED_IN, "X", at(9)),
    ]
    views_of(events)
    steps = all_changes(events)
    then = await occupancy.at(pool, SLUG, at(10))
    assert (then.inside, then.peak, then.peak_at) == (1, *peak(steps)) == (1, 1, at(9))
    now = await occupancy.now(pool, SLUG)
    assert (now.peak, now.peak_at) == peak(steps)


@pytest.mark.parametrize("width", WIDTHS, ids=["5m", "15m", "1h"])
async def test_occupancy_buckets_are_the_models_timeline(
    views_of: Callable[[list[AttendeeEvent]], None], pool: asyncpg.Pool, width: timedelta
) -> None:
    views_of(day())
    steps = all_changes(day())
    # Whole minutes read the per-minute table; a start within a minute, the exact changes.
    for start, end in [(at(8), at(11)), (at(9, 15), at(10, 45)), (at(9, 2, 30), at(10, 2, 30))]:
        edges = [start]
        while edges[-1] < end:
            edges.append(edges[-1] + width)
        answer = await occupancy.buckets(pool, SLUG, edges)
        model = timeline(steps, start, end, width)
        assert [(b.start, b.entered, b.exited, b.inside) for b in answer] == [
            (b.start, b.entered, b.exited, b.inside) for b in model
        ], (start, end)
        assert all(b.end == b.start + width for b in answer)


async def test_payment_totals_are_the_models(
    views_of: Callable[[list[AttendeeEvent]], None], pool: asyncpg.Pool
) -> None:
    events = payments_day()
    views_of(events)
    model = totals(ledger_of(events).values())
    answer = await payments.summary(pool, SLUG)

    def summed(*key: str) -> dict[tuple[object, ...], tuple[int, str]]:
        sums: dict[tuple[object, ...], tuple[int, Decimal]] = defaultdict(lambda: (0, Decimal(0)))
        for t in model:
            group = tuple(getattr(t, k) for k in key)
            count, amount = sums[group]
            sums[group] = (count + t.payments, amount + t.amount)
        # As text: 999.30 and 999.3 are equal Decimals, not the same amount.
        return {group: (count, str(amount)) for group, (count, amount) in sums.items()}

    assert {(t.day, t.currency): (t.payments, str(t.amount)) for t in answer.by_day} == summed(
        "day", "currency"
    )
    assert {
        (t.currency, t.method): (t.payments, str(t.amount)) for t in answer.by_method
    } == summed("currency", "method")
    assert {(t.currency,): (t.payments, str(t.amount)) for t in answer.by_currency} == summed(
        "currency"
    )
    assert summed("currency")[("PLN",)] == (5, "1050.30")
    # The answer names its event, and each list comes in the order the API documents.
    assert answer.event == SLUG
    assert [t.currency for t in answer.by_currency] == sorted(
        t.currency for t in answer.by_currency
    )
    methods = [(t.currency, t.method) for t in answer.by_method]
    assert methods == sorted(methods)
    days = [(t.day, t.currency) for t in answer.by_day]
    assert days == sorted(days)


async def test_an_exports_field_columns_come_from_the_kept_counts_as_from_every_row(
    views_of: Callable[[list[AttendeeEvent]], None], pool: asyncpg.Pool, database_url: str
) -> None:
    """An export's form-field columns are read from the roster's count of attendees per field
    (kept by its triggers, not by the fold): through new fields, a deletion (a deleted attendee
    keeps theirs), an erasure (theirs are gone) and a rebuild, they are exactly what a scan of
    every row's fields finds."""
    scan = f"(SELECT * FROM {roster.ROSTER_RELATION})"  # any other relation is scanned

    async def both() -> list[str]:
        kept = await roster.field_names(pool, SLUG)
        assert kept == await roster.field_names(pool, SLUG, scan)
        return kept

    views_of(
        [
            make_event(REGISTERED, "a-1", at(8), fields={"firstName": "Ola", "tShirt": "M"}),
            make_event(REGISTERED, "a-2", at(8, 1), fields={"diet": "vegan"}),
            make_event(REGISTERED, "a-3", at(8, 2), fields={"diet": "none", "badge": "VIP"}),
            make_event(REGISTERED, "a-4", at(8, 3), fields={"x": 1}, slug="other-event"),
        ]
    )
    assert await both() == ["badge", "diet", "tShirt"]  # byte order; firstName has a column
    views_of([make_event(UPDATED, "a-1", at(9), fields={"phone": "+48 600"})])
    assert await both() == ["badge", "diet", "phone", "tShirt"]
    views_of([make_event(DELETED, "a-3", at(10))])
    assert await both() == ["badge", "diet", "phone", "tShirt"]
    store = DeliveryStore(database_url)
    try:
        store.erase(SLUG, "a-3", "test")
    finally:
        store.close()
    Runner(database_url, SOURCE).catch_up()
    assert await both() == ["diet", "phone", "tShirt"]  # a-3 alone had a badge
    counts = {"id": 2, "firstName": 1, "tShirt": 1, "phone": 1, "diet": 1}
    assert await _field_counts(pool) == counts
    rebuild(database_url, ["roster"], SOURCE)
    assert await both() == ["diet", "phone", "tShirt"]
    assert await _field_counts(pool) == counts
    assert await roster.field_names(pool, "other-event") == ["x"]


async def _field_counts(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT field, attendees FROM analytics.roster_field_names WHERE event = $1", SLUG
    )
    return {row["field"]: row["attendees"] for row in rows}
