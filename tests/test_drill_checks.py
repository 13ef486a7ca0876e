"""Checks of the checkers: each of the drill's promise checks, given a store or views where the
promise was broken on purpose (a mutant), reports it; given the honest state, reports nothing."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from psycopg import sql

from projections.runner import Runner, ensure_views
from service.eventstore.source import SOURCE
from service.eventstore.store import DeliveryStore
from service.jte.sender import Acknowledged, Report
from service.jte.simulator import SignedDelivery
from tests.drill.access import refusal
from tests.drill.faults import Probe, Sample, check_probes, check_stored
from tests.drill.harness import check_views
from tests.drill.report import Finding
from tests.helpers import delivery, recorded

IDS = ["d-1", "d-2", "d-3"]


def signed(delivery_id: str) -> SignedDelivery:
    return SignedDelivery(
        slug="default", body="{}", headers={}, expect="accepted", delivery_id=delivery_id
    )


def report(acknowledged: list[str], unexpected: int = 0) -> Report:
    return Report(
        sent=len(IDS),
        elapsed=1.0,
        retries=0,
        http_statuses={200: len(acknowledged)},
        statuses={"accepted": len(acknowledged)},
        no_answer=0,
        unexpected=unexpected,
        acknowledged=[
            Acknowledged(delivery_id=d, http_status=200, position=None) for d in acknowledged
        ],
        outcomes=[],
    )


def store(database_url: str, ids: list[str]) -> None:
    """Store one delivery per id."""
    keeper = DeliveryStore(database_url)
    try:
        keeper.append([recorded(delivery("AttendeeCheckedIn", f"a-{d}", d), d) for d in ids])
    finally:
        keeper.close()


def stored_twice(database_url: str, delivery_id: str) -> None:
    """A mutant store: the same delivery id under a second key (what dedupe must prevent)."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO rollcall.deliveries_events (originator_id, originator_version, topic, "
            "state) SELECT gen_random_uuid(), originator_version, topic, state "
            "FROM rollcall.deliveries_events WHERE notification_id = 1"
        )
    assert delivery_id == IDS[0]


def checked(database_url: str, acknowledged: list[str], unexpected: int = 0) -> Finding:
    finding = Finding(scenario="mutant", load="-", faults="-")
    check_stored(finding, database_url, [signed(d) for d in IDS], report(acknowledged, unexpected))
    return finding


def test_check_stored_passes_the_honest_store(database_url: str) -> None:
    store(database_url, IDS)
    finding = checked(database_url, IDS)
    assert (finding.broken, finding.lost, finding.duplicated) == ([], 0, 0)


def test_check_stored_catches_a_lost_a_duplicated_and_an_unacknowledged_delivery(
    database_url: str,
) -> None:
    store(database_url, IDS[:2])  # d-3 acknowledged but never stored: lost
    stored_twice(database_url, "d-1")
    finding = checked(database_url, ["d-1", "d-3"], unexpected=1)  # d-2 never acknowledged
    assert (finding.lost, finding.duplicated) == (1, 1)
    assert finding.broken == [
        "1 deliveries lost",
        "1 stored twice",
        "1 never acknowledged",
        "1 unexpected answers",
    ]


def test_check_probes_catches_an_acknowledged_probe_that_was_not_stored(
    database_url: str,
) -> None:
    store(database_url, IDS[:1])
    probe = Probe("http://127.0.0.1:1", [])
    probe.samples = [
        Sample(sent=1.0, seconds=0.1, status=200, retry_after=False, delivery_id=d, position=1)
        for d in ("d-1", "p-lost")
    ]
    finding = Finding(scenario="mutant", load="-", faults="-")
    check_probes(finding, database_url, probe)
    assert (finding.broken, finding.lost) == (["1 acknowledged probe deliveries lost"], 1)


@pytest.mark.parametrize("tamper", [None, "roster", "occupancy", "payments"])
def test_check_views_catches_a_view_that_differs_from_a_rebuild(
    database_url: str, tamper: str | None
) -> None:
    keeper = DeliveryStore(database_url)
    try:
        keeper.append(
            [
                recorded(delivery("AttendeeRegistered", "a-1", "r-1")),
                recorded(delivery("AttendeeCheckedIn", "a-1", "c-1")),
                recorded(
                    json.dumps(
                        {
                            "event": "AttendeePaymentConfirmed",
                            "id": "p-1",
                            "attendee": {
                                "id": "a-1",
                                "payment": {"amount": "10.00", "currency": "PLN", "reference": "R"},
                            },
                        }
                    ).encode()
                ),
            ]
        )
    finally:
        keeper.close()
    ensure_views(database_url)
    Runner(database_url, SOURCE).catch_up()
    mutants = {
        "roster": "UPDATE analytics.roster SET paid = NOT paid",
        "occupancy": "UPDATE analytics.presence SET check_ins = check_ins + 1",
        "payments": "UPDATE analytics.payments SET amount = amount + 1",
    }
    if tamper:
        with psycopg.connect(database_url) as conn:
            # The analytics views are simple views over the live tables: writable.
            assert conn.execute(mutants[tamper]).rowcount == 1
    finding = Finding(scenario="mutant", load="-", faults="-")
    comparison = check_views(finding, database_url)
    if tamper is None:
        assert finding.broken == [] and comparison.equal
    else:
        assert not comparison.equal and comparison.differing >= 1
        assert finding.broken == [f"views differ from a rebuild in {comparison.differing} rows"]


def test_refusal_tells_a_missing_privilege_from_any_other_error(database_url: str) -> None:
    # The drill's privilege probes count only "no privilege": a missing table, a syntax error
    # or a statement that ran must each be told apart.
    nobody = f"drill_check_{uuid.uuid4().hex[:8]}"  # roles are server-wide: a name of its own
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert refusal(conn, "SELECT * FROM no_such_table") == "UndefinedTable"
        assert refusal(conn, "SELEC 1") == "SyntaxError"
        assert refusal(conn, "SELECT 1") == "ran"
        conn.execute("CREATE TABLE private (x int)")
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(nobody)))
        try:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(nobody)))
            assert refusal(conn, "SELECT * FROM private") == "no privilege"
            conn.execute("RESET ROLE")
            conn.execute("BEGIN READ ONLY")
            assert refusal(conn, "CREATE TABLE other (x int)") == "read-only"
            conn.execute("ROLLBACK")
        finally:
            conn.execute("RESET ROLE")
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(nobody)))
