"""Property: the same deliveries, stored in any order with any duplicates and applied in batches
of any size, give identical analytics query results."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from projections.runner import Runner
from service.eventstore.database import with_database
from service.eventstore.source import SOURCE
from service.eventstore.store import DeliveryStore
from tests.drill.snapshot import snapshot
from tests.helpers import recorded

TYPES = [
    "AttendeeRegistered",
    "AttendeeImported",
    "AttendeeUpdated",
    "AttendeeDeleted",
    "AttendeeCheckedIn",
    "AttendeeCheckedOut",
    "AttendeePaymentConfirmed",
]
DAY = datetime(2026, 5, 14, 8, tzinfo=UTC)

specs = st.lists(
    st.tuples(
        st.sampled_from(TYPES),
        st.integers(0, 4),  # attendee
        st.integers(0, 600),  # minute of the day, so ties happen
        st.sampled_from(["Acme", "Globex", None]),
        st.sampled_from(["R-1", "R-2", None]),
        # Strings and JSON numbers (written "=12.50" here): both must come back exactly, trailing
        # zeros included, after a row is rewritten by a later batch.
        st.sampled_from(["10.00", "99.50", "0.01", "=12.50", "=7"]),
    ),
    min_size=1,
    max_size=25,
)


Spec = tuple[str, int, int, str | None, str | None, str]


def body(n: int, spec: Spec) -> bytes:
    kind, who, minute, company, reference, amount = spec
    attendee: dict[str, object] = {"id": f"a-{who}", "email": f"a{who}+{n}@example.com"}
    if company:
        attendee["company"] = company
    if kind == "AttendeePaymentConfirmed":
        attendee["payment"] = {"amount": amount, "currency": "PLN", "reference": reference}
    envelope = {
        "event": kind,
        "id": f"delivery-{n}",
        "occurredAt": (DAY + timedelta(minutes=minute)).isoformat(),
        "attendee": attendee,
    }
    text = json.dumps(envelope)
    if amount.startswith("="):  # a JSON number, digits exactly as given
        text = text.replace(f'"{amount}"', amount[1:])
    return text.encode()


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    name = f"rollcall_prop_{uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def views_after(server_url: str, bodies: list[bytes], batch_size: int) -> dict[str, list[object]]:
    with fresh_database(server_url) as url:
        store = DeliveryStore(url)
        try:
            for start in range(0, len(bodies), 7):
                store.append([recorded(b, json.loads(b)["id"]) for b in bodies[start : start + 7]])
        finally:
            store.close()
        Runner(url, SOURCE, batch_size=batch_size).catch_up()
        return snapshot(url)  # type: ignore[return-value]


@settings(max_examples=12)
@given(specs, st.randoms(use_true_random=False), st.integers(1, 9))
def test_any_order_any_duplicates_any_batches_same_views(
    server_url: str,
    spec_list: list[Spec],
    rnd: random.Random,
    batch_size: int,
) -> None:
    bodies = [body(n, spec) for n, spec in enumerate(spec_list)]
    shuffled = bodies + [rnd.choice(bodies) for _ in range(len(bodies) // 2)]
    rnd.shuffle(shuffled)
    assert views_after(server_url, bodies, 1000) == views_after(server_url, shuffled, batch_size)
