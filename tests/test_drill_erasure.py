"""The drill's erasure scenario at CI size (real processes, a kill -9 with erasures in flight),
and proof that its checks catch personal data left readable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from service.config import EventConfig
from service.eventstore.store import DeliveryStore
from service.http.intake import delivery_record
from tests.drill import QUICK, run
from tests.drill.erasure import check_erased
from tests.drill.report import Finding
from tests.helpers import drill_directory, figure, held

VICTIM = {"email": "ewelina.erased-q9@example.org", "lastName": "Zapomniana-Q9"}
OTHER = {"email": "olek.kept-q9@example.org", "lastName": "Zostaje-Q9"}


@pytest.fixture
def root() -> Iterator[Path]:
    with drill_directory() as path:
        yield path


def test_erasure_holds(root: Path) -> None:
    [finding] = run(["erasure"], QUICK, root=root)
    held(finding)
    assert figure(finding, r"(\d+) attendees erased") == QUICK.erasures
    assert figure(finding, r"dump: (\d+) found") == 0
    assert figure(finding, r"([\d,]+) of their values sought") >= QUICK.erasures  # an email each
    assert figure(finding, r"([\d,]+) of their sealed deliveries") >= QUICK.erasures
    assert figure(finding, r"([\d,]+) other deliveries read back exactly") > 0


def about(event: str, attendee_id: str, delivery_id: str, person: dict[str, str]) -> bytes:
    attendee = {"id": attendee_id, **person}
    return json.dumps({"event": event, "id": delivery_id, "attendee": attendee}).encode()


def stored_and_erased(database_url: str) -> bytes:
    """The victim's and another attendee's deliveries stored, the victim erased; the victim's
    wrapped data key as it was before the erasure."""
    event = EventConfig(slug="default", secrets=("s",))
    store = DeliveryStore(database_url, pool_size=1)
    try:
        store.append(
            [
                delivery_record(event, {}, about("AttendeeRegistered", "a-v", "v1", VICTIM), "t"),
                delivery_record(event, {}, about("AttendeeUpdated", "a-v", "v2", VICTIM), "t"),
                delivery_record(event, {}, about("AttendeeRegistered", "a-o", "o1", OTHER), "t"),
            ]
        )
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT wrapped FROM rollcall.data_keys WHERE subject = 'a-v'"
            ).fetchone()
        assert row is not None
        store.erase("default", "a-v", "drill")
    finally:
        store.close()
    return bytes(row[0])


def checked(database_url: str) -> Finding:
    finding = Finding(scenario="mutant", load="-", faults="-")
    check_erased(finding, database_url, {"a-v": set(VICTIM.values())})
    return finding


def test_the_erasure_check_passes_an_honest_erasure(database_url: str) -> None:
    stored_and_erased(database_url)
    assert checked(database_url).broken == []


def test_the_erasure_check_catches_a_data_key_not_destroyed(database_url: str) -> None:
    wrapped = stored_and_erased(database_url)
    # The mutant: an erasure that skipped destroying the key.
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE rollcall.data_keys SET wrapped = %s WHERE subject = 'a-v'", (wrapped,))
    assert checked(database_url).broken == [
        "1 data keys of erased attendees not destroyed",
        "2 deliveries of erased attendees decrypt",
        "2 personal values of erased attendees readable via the store",
    ]


def test_the_erasure_check_catches_a_copy_left_in_any_table(database_url: str) -> None:
    stored_and_erased(database_url)
    # The mutant: a view (or a scratch table) that kept the person in the clear.
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE public.kept (email text)")
        conn.execute("INSERT INTO public.kept VALUES (%s)", (VICTIM["email"],))
    assert checked(database_url).broken == ["1 personal values of erased attendees in a dump"]
