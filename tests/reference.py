"""A small reference model of what the occupancy and ledger views answer, for the tests.

Production computes these answers in SQL (projections/occupancy.py, projections/payments.py);
the tests prove properties of the folds against this plain Python and compare the views'
real queries with it (tests/test_view_queries.py), so that the code a property proves and the
code that serves requests are held to the same answers.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import msgspec

from domain.ledger import LedgerEntry
from domain.presence import Change

# --- Occupancy: the step function of how many were inside when ---------------------------------


def in_step_order(changes: Iterable[Change]) -> list[Change]:
    """Changes by instant; at one instant, departures before arrivals, so that a count is never
    higher than the number of people really inside at the same time."""
    return sorted(changes, key=lambda change: (change.at, change.delta))


def inside_at(changes: Iterable[Change], at: datetime) -> int:
    """How many were inside at instant `at` (changes at `at` included)."""
    return sum(change.delta for change in changes if change.at <= at)


def peak(changes: Iterable[Change]) -> tuple[int, datetime | None]:
    """The highest occupancy and the first instant it was reached."""
    inside, best, best_at = 0, 0, None
    for change in in_step_order(changes):
        inside += change.delta
        if inside > best:
            best, best_at = inside, change.at
    return best, best_at


class Bucket(msgspec.Struct, frozen=True, kw_only=True):
    """Occupancy over [start, start + bucket): arrivals, departures, and inside at its end."""

    start: datetime
    entered: int
    exited: int
    inside: int


def timeline(
    changes: Sequence[Change], start: datetime, end: datetime, bucket: timedelta
) -> list[Bucket]:
    """Per bucket from `start` until `end` (the last bucket is whole, and may end after `end`):
    who came, who left, and how many were inside at the bucket's end."""
    if bucket <= timedelta(0):
        raise ValueError("a bucket must be longer than zero")
    steps = in_step_order(changes)
    inside = sum(c.delta for c in steps if c.at < start)
    buckets = []
    index = bisect.bisect_left([c.at for c in steps], start)
    cursor = start
    while cursor < end:
        stop = cursor + bucket
        entered = exited = 0
        while index < len(steps) and steps[index].at < stop:
            delta = steps[index].delta
            entered += delta > 0
            exited += delta < 0
            inside += delta
            index += 1
        buckets.append(Bucket(start=cursor, entered=entered, exited=exited, inside=inside))
        cursor = stop
    return buckets


# --- Ledger: totals by currency, method and day ------------------------------------------------


class Total(msgspec.Struct, frozen=True, kw_only=True):
    """Payments of one JTE event summed by currency, method and (UTC) day."""

    slug: str
    currency: str
    method: str
    day: date
    payments: int
    amount: Decimal


def totals(entries: Iterable[LedgerEntry]) -> list[Total]:
    """Sums by event, currency, method and UTC day, exact."""
    sums: dict[tuple[str, str, str, date], tuple[int, Decimal]] = {}
    for entry in entries:
        key = (entry.slug, entry.currency, entry.method, entry.paid_at.astimezone(UTC).date())
        count, amount = sums.get(key, (0, Decimal(0)))
        sums[key] = (count + 1, amount + entry.amount)
    return [
        Total(slug=s, currency=c, method=m, day=d, payments=n, amount=a)
        for (s, c, m, d), (n, a) in sorted(sums.items())
    ]
