"""The bulk rebuild (projections/bulk.py) against the batch engine it replaces and the live views:
the same rows byte for byte, exactly-once tracking afterwards, and resuming after an interrupt
or a kill at any point."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from projections.fold import PoisonError
from projections.rebuild import as_of_schema, build_as_of, rebuild
from projections.registry import VIEW_NAMES, VIEWS
from projections.runner import Runner
from projections.schema import live_version, versions
from projections.tracking import positions
from service.eventstore.source import SOURCE
from service.eventstore.store import DeliveryStore
from service.jte.simulator import SimulationOptions, simulate
from tests.helpers import delivery, recorded, wait_until

ALL = list(VIEW_NAMES)


def append_day(database_url: str, seed: int, attendees: int = 150) -> None:
    """A simulated day, out of order and with duplicates, appended straight to the store."""
    options = SimulationOptions(seed=seed, attendees=attendees, out_of_order=0.3, duplicates=0.05)
    day = simulate(options)
    bodies = [recorded(d.body, d.delivery_id) for d in day if d.expect == "accepted"]
    store = DeliveryStore(database_url)
    try:
        for start in range(0, len(bodies), 500):
            store.append(bodies[start : start + 500])
    finally:
        store.close()


def append(database_url: str, bodies: list[bytes]) -> None:
    store = DeliveryStore(database_url)
    try:
        store.append([recorded(body) for body in bodies])
    finally:
        store.close()


def tables(database_url: str) -> dict[str, list[str]]:
    """Every row of every table of the live versions, as PostgreSQL prints it (byte for byte:
    fold states, moves and form fields included), and the dead letters."""
    dump = {}
    with psycopg.connect(database_url) as conn:
        for name in VIEW_NAMES:
            version = live_version(conn, name)
            assert version is not None
            for table in VIEWS[name].tables:
                rows = conn.execute(
                    sql.SQL("SELECT t::text FROM {} t").format(version.table(table))
                ).fetchall()
                dump[table] = sorted(row[0] for row in rows)
        letters = conn.execute(
            "SELECT view, position, delivery_key::text, slug, attendee_id, event_type, error "
            "FROM rollcall.dead_letters d JOIN rollcall.view_versions v USING (view, version) "
            "WHERE v.state = 'live'"
        ).fetchall()
    dump["dead_letters"] = sorted(map(repr, letters))
    return dump


def live_positions(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        live = [live_version(conn, name) for name in VIEW_NAMES]
        return {v.view: p for v, p in positions(cur, [v for v in live if v]).items()}


def head(database_url: str) -> int:
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        return SOURCE.head(cur)


def test_bulk_equals_the_batch_engine_and_the_live_views_byte_for_byte(database_url: str) -> None:
    append_day(database_url, seed=5)
    # A payment the ledger cannot record (dead-lettered), and a body the parser cannot read.
    unusable = delivery("AttendeePaymentConfirmed", attendee_id="p-1").replace(
        b'"firstName": "Ola"', b'"firstName": "Ola", "payment": {"amount": "abc"}'
    )
    append(database_url, [unusable, b'{"event": "AttendeeRegistered", "attendee": 7}'])
    append_day(database_url, seed=6, attendees=40)
    Runner(database_url, SOURCE).catch_up()
    live = tables(database_url)
    assert live["roster"] and live["occupancy_changes"] and live["payments"]
    assert live["occupancy_minutes"] and live["dead_letters"]

    rebuild(database_url, ALL, SOURCE, skip_poison=True, engine="batches", batch_size=333)
    batches = tables(database_url)
    built = rebuild(database_url, ALL, SOURCE, skip_poison=True, engine="bulk")
    assert {v.version for v in built} == {3}
    bulk = tables(database_url)
    assert bulk == batches
    assert bulk == live
    # Its tracking is the last position folded: the live runner carries on from there, once.
    assert live_positions(database_url) == dict.fromkeys(VIEW_NAMES, head(database_url))
    append_day(database_url, seed=7, attendees=60)
    applied = Runner(database_url, SOURCE).catch_up()
    assert applied > 0
    assert live_positions(database_url) == dict.fromkeys(VIEW_NAMES, head(database_url))
    carried_on = tables(database_url)
    rebuild(database_url, ALL, SOURCE, skip_poison=True, engine="batches")
    assert tables(database_url) == carried_on


def test_bulk_is_strict_about_poison(database_url: str) -> None:
    append_day(database_url, seed=8, attendees=20)
    unusable = delivery("AttendeePaymentConfirmed", attendee_id="p-1").replace(
        b'"firstName": "Ola"', b'"firstName": "Ola", "payment": {"amount": "abc"}'
    )
    append(database_url, [unusable])
    with pytest.raises(PoisonError, match=r"payments: delivery at position .* not a decimal"):
        rebuild(database_url, ["payments"], SOURCE)
    append(database_url, [b'{"event": "AttendeeRegistered", "attendee": 7}'])
    with pytest.raises(PoisonError, match=r"roster: delivery at position .* unreadable"):
        rebuild(database_url, ["roster"], SOURCE)


class Interrupt:
    """A progress callback that raises KeyboardInterrupt (as Ctrl-C does) at its nth call."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.calls = 0

    def __call__(self, progress: object) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt


def test_an_interrupted_bulk_rebuild_resumes_to_the_same_views(database_url: str) -> None:
    append_day(database_url, seed=9, attendees=80)
    Runner(database_url, SOURCE).catch_up()
    live = tables(database_url)
    calls = 0

    def count(progress: object) -> None:
        nonlocal calls
        calls += 1

    rebuild(database_url, ALL, SOURCE, on_progress=count)
    assert calls > 3
    # Interrupted at every progress report in turn: during the scan, between the folds, and in
    # the catch-up after them; each rerun resumes the unfinished versions.
    for stop_at in range(1, calls + 1):
        with pytest.raises(KeyboardInterrupt):
            rebuild(database_url, ALL, SOURCE, on_progress=Interrupt(stop_at))
        assert tables(database_url) == live, "the live views are untouched"
        with psycopg.connect(database_url) as conn:
            unfinished = {v.view: v.version for v in versions(conn) if v.state == "building"}
        assert set(unfinished) == set(VIEW_NAMES)
        built = rebuild(database_url, ALL, SOURCE)
        assert {v.view: v.version for v in built} == unfinished, "the rerun resumes them"
        assert tables(database_url) == live


def test_a_killed_bulk_rebuild_leaves_no_worker_and_resumes(
    database_url: str, tmp_path: Path
) -> None:
    append_day(database_url, seed=10, attendees=600)
    Runner(database_url, SOURCE).catch_up()
    live = tables(database_url)
    env = {"DATABASE_URL": database_url, "ROLLCALL_DATA_DIR": str(tmp_path), "PATH": "/usr/bin"}
    command = [sys.executable, "-m", "service.cli", "--log-level", "warning", "rebuild", "all"]
    process = subprocess.Popen(command, env=env)

    def workers_folding() -> bool:
        with psycopg.connect(database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query ILIKE '%%rebuild_scratch_%%' AND pid <> pg_backend_pid()"
            ).fetchone()
        return bool(row and row[0]) or process.poll() is not None

    wait_until(workers_folding, 60)
    process.send_signal(signal.SIGKILL)
    process.wait()

    def no_rebuild_connected() -> bool:
        with psycopg.connect(database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            ).fetchone()
        return row == (0,)

    wait_until(no_rebuild_connected, 30)  # its workers died with it
    rebuild(database_url, ALL, SOURCE)
    assert tables(database_url) == live


def test_as_of_in_bulk_equals_the_batch_engine(database_url: str) -> None:
    append_day(database_url, seed=11, attendees=50)
    with psycopg.connect(database_url) as conn:
        cut = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    late = [delivery("AttendeeCheckedIn", attendee_id=f"late-{n}") for n in range(5)]
    append(database_url, late)
    when = cut.astimezone(UTC)
    assert when < datetime.now(UTC)

    def as_of_rows(schema: str) -> list[str]:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(schema, "presence"))
            ).fetchall()
        return sorted(row[0] for row in rows)

    bulk = as_of_rows(build_as_of(database_url, ["occupancy"], SOURCE, when, engine="bulk"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(as_of_schema(when))))
    batches = as_of_rows(build_as_of(database_url, ["occupancy"], SOURCE, when, engine="batches"))
    assert bulk == batches
    assert bulk and not any("late-" in row for row in bulk)


def test_the_scratch_table_holds_nothing_readable(database_url: str) -> None:
    append(
        database_url,
        [
            delivery("AttendeeRegistered", attendee_id=f"s-{n}", delivery_id=f"d-{n}")
            for n in range(40)
        ],
    )
    looked: list[int] = []

    def look(progress: object) -> None:
        with psycopg.connect(database_url) as conn:
            scratches = conn.execute(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE 'rebuild_scratch_%%'"
            ).fetchall()
            for (name,) in scratches:
                events = conn.execute(
                    sql.SQL("SELECT event FROM {}").format(sql.Identifier("rollcall_views", name))
                ).fetchall()
                for (event,) in events:
                    assert b"example.com" not in event and b"Ola" not in event
                looked.append(len(events))

    rebuild(database_url, ALL, SOURCE, on_progress=look)
    assert max(looked) == 40, "the scratch table was seen full"
    with psycopg.connect(database_url) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'rebuild_scratch_%%'"
        ).fetchone()
    assert left == (0,), "and it is gone afterwards"


def test_a_payment_reference_shared_by_attendees_of_both_workers(database_url: str) -> None:
    # A group purchase: one reference paid for attendees whom the fold's workers split between
    # them; the ledger keeps the latest confirmation, as the batch engine and live views do.
    bodies = [
        delivery(
            "AttendeePaymentConfirmed",
            attendee_id=f"g-{n}",
            delivery_id=f"pay-{n}",
            occurredAt=f"2026-05-14T10:{n:02d}:00Z",
        ).replace(
            b'"firstName": "Ola"',
            b'"firstName": "Ola", "payment": {"amount": "%d.50", "currency": "PLN", '
            b'"reference": "group-%d"}' % (n, n % 3),
        )
        for n in range(30)
    ]
    append(database_url, bodies)
    Runner(database_url, SOURCE).catch_up()
    live = tables(database_url)
    assert len(live["payments"]) == 3
    rebuild(database_url, ALL, SOURCE)
    assert tables(database_url) == live
    rebuild(database_url, ALL, SOURCE, engine="batches")
    assert tables(database_url) == live
