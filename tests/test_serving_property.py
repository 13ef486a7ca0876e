"""Property: what the API serves equals an independent pure reference, whatever the arrival order
and duplicates. Hypothesis generates deliveries; they go through the real HTTP intake, the real
store and the real projection runner (real PostgreSQL); the answers of the roster (pages, CSV),
occupancy (now and `at=`), the timeline and the payment summaries are compared with plain
Python below and in tests/reference.py, which import nothing of the folds or SQL they check.

Each example uses a JTE event of its own on one service, so examples cost a few requests each.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import domain.ledger
import domain.roster
import projections.occupancy
import projections.payments
from domain.presence import Change
from service.config import EventConfig
from tests import reference
from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import SECRET, RunningService, api_token, bearer, token_headers

# Measured in notes/12.md; ROLLCALL_PROPERTY_EXAMPLES raises it for a longer hunt.
EXAMPLES = int(os.environ.get("ROLLCALL_PROPERTY_EXAMPLES", "60"))
DAY = datetime(2026, 5, 14, 8, tzinfo=UTC)
SLUGS = [f"prop-{n}" for n in range(EXAMPLES * 4)]  # shrinking runs more examples than asked
KINDS = ["AttendeeRegistered", "AttendeeDeleted", "AttendeeCheckedIn", "AttendeeCheckedOut"]
KINDS += ["AttendeePaymentConfirmed"]
LAST_NAMES = ["Nowak", "Lis", "=cmd|' /C calc'!A0", "Żak"]  # one a CSV formula, one non-ASCII
PAYMENTS = [("349.00", "PLN", "payu"), ("100.50", "EUR", "bank_transfer"), ("0.01", "PLN", "tpay")]

# (kind, attendee, minute of the day (unique: no ties to break), last name, payment)
Fact = tuple[str, int, int, int, int]
facts = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, 3),
        st.integers(0, 16 * 60 - 1),
        st.integers(0, len(LAST_NAMES) - 1),
        st.integers(0, len(PAYMENTS) - 1),
    ),
    min_size=1,
    max_size=20,
    unique_by=lambda fact: fact[2],
)


def at(minute: int) -> datetime:
    return DAY + timedelta(minutes=minute)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def body(n: int, fact: Fact) -> bytes:
    kind, who, minute, name, pay = fact
    attendee: dict[str, Any] = {"id": f"a-{who}"}
    if kind == "AttendeeRegistered":
        attendee |= {"firstName": f"F{who}", "lastName": LAST_NAMES[name]}
    if kind == "AttendeePaymentConfirmed":
        amount, currency, method = PAYMENTS[pay]
        attendee["payment"] = {"amount": amount, "currency": currency, "method": method}
    return json.dumps(
        {"event": kind, "id": f"d-{n}", "occurredAt": iso(at(minute)), "attendee": attendee}
    ).encode()


# --- the reference: plain Python over the set of deliveries, in occurrence order -------------


class Expected:
    """What every view must answer for a set of facts, whatever order they arrived in."""

    def __init__(self, given: list[Fact]) -> None:
        self.changes: list[Change] = []
        self.people: dict[str, dict[str, Any]] = {}
        self.check_ins = self.check_outs = self.repeats = 0
        self.payments: list[tuple[str, str, str, datetime]] = []
        inside: set[int] = set()
        for kind, who, minute, name, pay in sorted(given, key=lambda fact: fact[2]):
            moment = at(minute)
            person = self.people.setdefault(
                f"a-{who}", {"registered": False, "deleted": False, "last_name": None}
            )
            if kind == "AttendeeRegistered":
                person |= {"registered": True, "deleted": False, "last_name": LAST_NAMES[name]}
            elif kind == "AttendeeDeleted":
                person["deleted"] = True
                if who in inside:
                    inside.discard(who)
                    self.changes.append(Change(at=moment, delta=-1))
            elif kind == "AttendeeCheckedIn":
                self.check_ins += 1
                if who in inside:
                    self.repeats += 1
                else:
                    inside.add(who)
                    self.changes.append(Change(at=moment, delta=1))
            elif kind == "AttendeeCheckedOut":
                self.check_outs += 1
                if who in inside:
                    inside.discard(who)
                    self.changes.append(Change(at=moment, delta=-1))
            else:
                person["paid"] = True
                self.payments.append((*PAYMENTS[pay], moment))
        self.inside = {f"a-{who}" for who in inside}
        self.entered = {c for c in self.changes if c.delta > 0}

    def status(self, person: dict[str, Any]) -> str:
        if person["deleted"]:
            return "deleted"
        return "registered" if person["registered"] else "unregistered"

    def roster(self) -> dict[str, tuple[str, bool, bool, str | None]]:
        return {
            attendee: (
                self.status(person),
                attendee in self.inside,
                person.get("paid", False),
                person["last_name"],
            )
            for attendee, person in self.people.items()
        }

    def occupancy(self, until: datetime | None = None) -> dict[str, Any]:
        changes = [c for c in self.changes if until is None or c.at <= until]
        peak, peak_at = reference.peak(changes)
        return {
            "inside": sum(c.delta for c in changes),
            "peak": peak,
            "peak_at": iso(peak_at) if peak_at else None,
            "entries": sum(c.delta > 0 for c in changes),
            "exits": sum(c.delta < 0 for c in changes),
        }

    def by_currency(self) -> list[dict[str, Any]]:
        sums: dict[str, tuple[int, Decimal]] = {}
        for amount, currency, _, _ in self.payments:
            count, total = sums.get(currency, (0, Decimal(0)))
            sums[currency] = (count + 1, total + Decimal(amount))
        return [
            {"currency": currency, "payments": count, "amount": str(total)}
            for currency, (count, total) in sorted(sums.items())
        ]

    def by_method(self) -> Counter[tuple[str, str]]:
        return Counter((currency, method) for _, currency, method, _ in self.payments)


# --- the serving path ------------------------------------------------------------------------


@pytest.fixture
def serving(start_service: Any, database_url: str) -> Iterator[tuple[httpx.Client, str]]:
    yield from _serve(start_service, database_url)


@pytest.fixture
def serving_folds_here(start_service: Any, database_url: str) -> Iterator[tuple[httpx.Client, str]]:
    """The service with its views folded in a thread of this process, where a planted mutant
    reaches the fold (the default child process imports its own, unmutated copy)."""
    yield from _serve(start_service, database_url, projection_runner="thread")


def _serve(
    start_service: Any, database_url: str, **settings: object
) -> Iterator[tuple[httpx.Client, str]]:
    events = {slug: EventConfig(slug=slug, secrets=(SECRET,)) for slug in SLUGS}
    service: RunningService = start_service(events=events, **settings)
    headers = bearer(api_token(database_url, "read"))
    with httpx.Client(base_url=service.url, timeout=60, headers=headers) as client:
        yield client, database_url


def walk(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    """Every item of a paged list, two at a time."""
    items: list[dict[str, Any]] = []
    url: str | None = f"{path}&limit=2"
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor = page.json()["next_cursor"]
        url = f"{path}&limit=2&cursor={cursor}" if cursor else None
    return items


@settings(
    max_examples=EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(facts, st.randoms(use_true_random=False))
def test_the_api_answers_as_the_reference_in_any_order_with_duplicates(
    serving: tuple[httpx.Client, str], given: list[Fact], rnd: random.Random
) -> None:
    arrivals = list(range(len(given)))
    arrivals += [rnd.randrange(len(given)) for _ in range(len(given) // 2)]
    rnd.shuffle(arrivals)
    served_as_the_reference(*serving, given, arrivals)


def served_as_the_reference(
    client: httpx.Client, database_url: str, given: list[Fact], arrivals: list[int]
) -> None:
    """Deliver `given` in the order of `arrivals` (indices into it, repeats allowed, each at
    least once) on an event of its own; assert every answer the API serves is the reference's."""
    assert set(arrivals) == set(range(len(given)))
    slug = SLUGS.pop(0)
    bodies = [body(n, fact) for n, fact in enumerate(given)]
    statuses: Counter[str] = Counter()
    for delivery in (bodies[n] for n in arrivals):
        answer = client.post(f"/webhooks/jte/{slug}", content=delivery, headers=token_headers())
        assert answer.status_code == 200, answer.text
        statuses[answer.json()["status"]] += 1
    assert statuses == Counter(accepted=len(bodies), duplicate=len(arrivals) - len(bodies))
    wait_until_caught_up(database_url, 60)
    expected = Expected(given)
    base = f"/v1/events/{slug}"

    # Roster: walked in pages of two, the same as one page, as the CSV, as the reference.
    walked = walk(client, f"{base}/roster?status=all")
    whole = client.get(f"{base}/roster?status=all&limit=1000").json()["items"]
    assert walked == whole
    served = {
        a["attendee_id"]: (a["status"], a["checked_in"], a["paid"], a["last_name"]) for a in whole
    }
    assert served == expected.roster(), "roster"
    rows = list(
        csv.DictReader(io.StringIO(client.get(f"{base}/roster?status=all&format=csv").text))
    )
    assert [r["attendee_id"] for r in rows] == [a["attendee_id"] for a in whole]
    for row, item in zip(rows, whole, strict=True):
        name = item["last_name"] or ""
        assert row["last_name"] == ("'" + name if name[:1] in ("=", "+", "-", "@") else name)

    # Occupancy now, and at instants around every change.
    now = client.get(f"{base}/occupancy").json()
    assert {k: now[k] for k in ("inside", "peak", "peak_at", "entries", "exits")} == (
        expected.occupancy()
    )
    assert (now["check_ins"], now["check_outs"], now["repeated_check_ins"]) == (
        expected.check_ins,
        expected.check_outs,
        expected.repeats,
    )
    assert now["unique_attendees_inside"] == len(_ever_inside(given))
    instants = {
        at(minute) + timedelta(seconds=s) for _, _, minute, _, _ in given for s in (-1, 0, 30)
    }
    for instant in sorted(instants)[:12]:
        answer = client.get(f"{base}/occupancy", params={"at": iso(instant)}).json()
        assert {k: answer[k] for k in ("inside", "peak", "peak_at", "entries", "exits")} == (
            expected.occupancy(instant)
        ), f"occupancy at {iso(instant)}"

    # The timeline, in 15-minute buckets over the whole day.
    start, end = DAY, DAY + timedelta(hours=16)
    timeline = client.get(
        f"{base}/occupancy/timeline", params={"bucket": "15m", "from": iso(start), "to": iso(end)}
    ).json()
    assert [(b["entered"], b["exited"], b["inside"]) for b in timeline["buckets"]] == [
        (b.entered, b.exited, b.inside)
        for b in reference.timeline(expected.changes, start, end, timedelta(minutes=15))
    ]

    # Payments: every confirmation an entry; the summaries exact.
    summary = client.get(f"{base}/payments/summary").json()
    assert summary["by_currency"] == expected.by_currency(), "payments by currency"
    assert Counter({(m["currency"], m["method"]): m["payments"] for m in summary["by_method"]}) == (
        expected.by_method()
    )
    entries = walk(client, f"{base}/payments?currency=PLN") + walk(
        client, f"{base}/payments?currency=EUR"
    )
    assert sorted((p["amount"], p["currency"], p["method"]) for p in entries) == sorted(
        (amount, currency, method) for amount, currency, method, _ in expected.payments
    )


def _ever_inside(given: list[Fact]) -> set[str]:
    """Attendees with at least one check-in."""
    return {f"a-{who}" for kind, who, *_ in given if kind == "AttendeeCheckedIn"}


# --- checks of the checker: a bug in what the API serves fails the property ----------------


def _arrival_wins(entry: Any, event: Any, move: str) -> None:
    """The roster's presence register with the last *arrival* winning, not the latest event."""
    entry.move_order, entry.move = event.order, move


async def _at_excludes_the_instant(pool: Any, slug: str, when: datetime) -> Any:
    """occupancy?at= leaving out a change at that very instant (`<` where `<=` belongs)."""
    answer = await _REAL_AT(pool, slug, when - timedelta(microseconds=1))
    return msgspec.structs.replace(answer, at=when)


def _truncated_amount(event: Any) -> Any:
    """The ledger's fold dropping the fraction of an amount."""
    entry = _REAL_LEDGER_ENTRY(event)
    return msgspec.structs.replace(entry, amount=entry.amount.to_integral_value(ROUND_DOWN))


_REAL_AT = projections.occupancy.at
_REAL_LEDGER_ENTRY = domain.ledger.ledger_entry
# Each mutant: where it is planted, deliveries and their arrival order that expose it, and the
# check that must catch it.
MUTANTS: dict[str, tuple[object, str, Any, list[Fact], list[int], str]] = {
    "roster fold: the last arrival wins": (
        domain.roster,
        "_move",
        _arrival_wins,
        [("AttendeeCheckedIn", 0, 10, 0, 0), ("AttendeeCheckedOut", 0, 20, 0, 0)],
        [1, 0],  # the check-out arrives first
        "roster",
    ),
    "occupancy query: at= leaves out that instant": (
        projections.occupancy,
        "at",
        _at_excludes_the_instant,
        [("AttendeeCheckedIn", 1, 10, 0, 0)],
        [0],
        "occupancy at 2026-05-14T08:10:00Z",
    ),
    "payments fold: amounts truncated": (
        projections.payments,
        "ledger_entry",
        _truncated_amount,
        [("AttendeePaymentConfirmed", 2, 30, 0, 1)],  # 100.50 EUR
        [0],
        "payments by currency",
    ),
}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_the_property_catches_a_bug_in_what_the_api_serves(
    serving_folds_here: tuple[httpx.Client, str], monkeypatch: pytest.MonkeyPatch, mutant: str
) -> None:
    module, name, planted, given, arrivals, check = MUTANTS[mutant]
    served_as_the_reference(*serving_folds_here, given, arrivals)  # the honest service passes
    monkeypatch.setattr(module, name, planted)
    with pytest.raises(AssertionError) as caught:
        served_as_the_reference(*serving_folds_here, given, arrivals)
    assert str(caught.value).startswith(check + "\n"), caught.value
