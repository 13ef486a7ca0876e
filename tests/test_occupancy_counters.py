"""The counters row's entries, exits and peak (projections/occupancy.py), on a real PostgreSQL.

"Occupancy now" reads them from one row; they must stay what the window queries over the
minutes computed before, batch after batch (late check-outs and deletions lower the peak), in
a bulk rebuild, and in a version of the previous release's shape once migrated: a live one at
start, an interrupted build when it resumes.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import sql

from domain.events import CHECKED_IN, CHECKED_OUT, DELETED, AttendeeEvent
from projections import occupancy
from projections.rebuild import rebuild
from projections.registry import VIEWS
from projections.runner import Runner, ensure_views
from projections.schema import ANALYTICS, Version, create_version, live_version
from service.eventstore.source import SOURCE
from service.eventstore.store import DeliveryStore
from tests.events_factory import SLUG, all_changes, at, make_event
from tests.reference import peak
from tests.test_view_queries import recorded

OTHER, STRAY = "jte-other", "jte-stray"
Row = tuple[int, int, int, datetime | None]  # entries, exits, peak, peak_at
_S_SLUG = sql.SQL("s.slug")
# `analytics.occupancy`'s columns: the previous release's, then entries and exits.
COLUMNS = [
    "event", "inside_now", "peak", "peak_at", "check_ins", "check_outs", "repeated_check_ins",
    "stray_check_outs", "unique_attendees_inside", "entries", "exits",
]  # fmt: skip


def batches() -> list[list[AttendeeEvent]]:
    """Batches whose late moves lower earlier peaks, each shuffled (out of order)."""
    first = [
        make_event(CHECKED_IN, "p1", at(9)),
        make_event(CHECKED_IN, "p2", at(9, 10)),
        make_event(CHECKED_IN, "p3", at(9, 20)),
        make_event(CHECKED_IN, "p4", at(9, 20, 30)),
        make_event(CHECKED_IN, "q1", at(10), slug=OTHER),
        make_event(CHECKED_IN, "q2", at(10, 1), slug=OTHER),
        make_event(CHECKED_OUT, "s1", at(11), slug=STRAY),  # counted, but no stay: no peak
    ]
    # Peak of SLUG 4 -> 3; OTHER is not in this batch.
    second = [make_event(CHECKED_OUT, "p1", at(9, 5))]
    # SLUG 3 -> 2; OTHER 2 at 10:01 -> 1 at 10:00; STRAY's first stay.
    third = [
        make_event(DELETED, "p2", at(9, 15)),
        make_event(CHECKED_OUT, "q1", at(10, 0, 30), slug=OTHER),
        make_event(CHECKED_IN, "s1", at(11, 30), slug=STRAY),
    ]
    # SLUG: 2 reached again earlier (the first instant wins), a repeat and a stray.
    fourth = [
        make_event(CHECKED_IN, "p5", at(8)),
        make_event(CHECKED_IN, "p6", at(8, 30)),
        make_event(CHECKED_IN, "p6", at(8, 40)),
        make_event(CHECKED_OUT, "p6", at(8, 50)),
        make_event(CHECKED_OUT, "p5", at(8, 55)),
        make_event(CHECKED_OUT, "p7", at(8, 56)),
    ]
    shuffle = random.Random(7).shuffle
    for batch in (first, third, fourth):
        shuffle(batch)
    return [first, second, third, fourth]


def apply(database_url: str, events: list[AttendeeEvent]) -> None:
    """Store the events as deliveries and apply them to the live views as one batch."""
    store = DeliveryStore(database_url)
    try:
        store.append([recorded(event) for event in events])
    finally:
        store.close()
    Runner(database_url, SOURCE).catch_up()


def model(events: list[AttendeeEvent]) -> dict[str, Row]:
    """Entries, exits and the peak of each JTE event, from the pure folds."""
    result = {}
    for slug in sorted({e.slug for e in events}):
        steps = all_changes([e for e in events if e.slug == slug])
        entries, exits = sum(s.delta > 0 for s in steps), sum(s.delta < 0 for s in steps)
        result[slug] = (entries, exits, *peak(steps))
    return result


def stored(conn: psycopg.Connection[Any]) -> dict[str, Row]:
    """The live counters rows' entries, exits, peak and peak_at."""
    version = _live(conn)
    rows = conn.execute(
        sql.SQL("SELECT slug, entries, exits, peak, peak_at FROM {}").format(
            version.table("occupancy")
        )
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def windowed(conn: psycopg.Connection[Any]) -> dict[str, Row]:
    """The same as the previous release computed them: sums and peak_query over the minutes."""
    version = _live(conn)
    minutes = version.table("occupancy_minutes")
    rows = conn.execute(
        sql.SQL(
            "SELECT s.slug, (SELECT coalesce(sum(entered), 0) FROM {0} m WHERE m.slug = s.slug), "
            "(SELECT coalesce(sum(exited), 0) FROM {0} m WHERE m.slug = s.slug), "
            "coalesce(p.peak, 0), p.peak_at FROM {1} s LEFT JOIN LATERAL ({2}) p ON true"
        ).format(minutes, version.table("occupancy"), occupancy.peak_query(version, _S_SLUG))
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def _live(conn: psycopg.Connection[Any]) -> Version:
    version = live_version(conn, "occupancy")
    assert version is not None
    return version


async def answers(pool: asyncpg.Pool) -> dict[str, occupancy.Occupancy]:
    return {slug: await occupancy.now(pool, slug) for slug in (SLUG, OTHER, STRAY)}


async def test_live_batches_and_a_bulk_rebuild_keep_the_window_queries_answers(
    database_url: str, pool: asyncpg.Pool
) -> None:
    applied: list[AttendeeEvent] = []
    peaks = []
    for batch in batches():
        apply(database_url, batch)
        applied += batch
        with psycopg.connect(database_url) as conn:
            assert stored(conn) == windowed(conn) == model(applied)
            peaks.append(stored(conn)[SLUG][2:])
        for slug, row in model(applied).items():
            now = await occupancy.now(pool, slug)
            assert (now.entries, now.exits, now.peak, now.peak_at) == row
    # The late moves did lower it; at 2 again, the first instant it was reached.
    assert peaks == [(4, at(9, 20, 30)), (3, at(9, 20, 30)), (2, at(9, 20, 30)), (2, at(8, 30))]
    with psycopg.connect(database_url) as conn:
        live = stored(conn)
    rebuild(database_url, ["occupancy"], SOURCE)
    with psycopg.connect(database_url) as conn:
        assert stored(conn) == windowed(conn) == live


def _previous_tables(conn: psycopg.Connection[Any], version: Version) -> None:
    """Leave `version`'s counters table as the previous release made it."""
    table = version.table("occupancy")
    for column in ("entries", "exits", "peak", "peak_at"):
        conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(table, sql.Identifier(column)))


def _previous_release(conn: psycopg.Connection[Any], version: Version) -> None:
    """Leave `version` and `analytics.occupancy` as the previous release made them."""
    table = version.table("occupancy")
    conn.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(ANALYTICS, occupancy.OCCUPANCY)))
    _previous_tables(conn, version)
    conn.execute(
        sql.SQL(
            "CREATE VIEW {} AS SELECT s.slug AS event, s.inside_now, coalesce(p.peak, 0) AS peak, "
            "p.peak_at, s.check_ins, s.check_outs, s.repeated_check_ins, s.stray_check_outs, "
            "s.ever_inside AS unique_attendees_inside FROM {} s LEFT JOIN LATERAL ({}) p ON true"
        ).format(
            sql.Identifier(ANALYTICS, occupancy.OCCUPANCY),
            table,
            occupancy.peak_query(version, _S_SLUG),
        )
    )


def _view_oid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT %s::regclass::oid", (f"{ANALYTICS}.{occupancy.OCCUPANCY}",))
    found = row.fetchone()
    assert found is not None
    return int(found[0])


async def test_a_live_version_of_the_previous_shape_is_migrated_at_start(
    database_url: str, pool: asyncpg.Pool
) -> None:
    first, second, *later = batches()
    apply(database_url, first + second)
    before = await answers(pool)
    with psycopg.connect(database_url, autocommit=True) as conn:
        version = _live(conn)
        _previous_release(conn, version)
    # Served before the runner's start migrates it: the same answers, the slow way.
    assert await answers(pool) == before
    ensure_views(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert _live(conn) == version  # migrated in place, not rebuilt
        assert stored(conn) == windowed(conn) == model(first + second)
        published = _view_oid(conn)
        view = conn.execute(f"SELECT * FROM {ANALYTICS}.{occupancy.OCCUPANCY} LIMIT 0")
        assert [column.name for column in view.description or []] == COLUMNS
    assert await answers(pool) == before
    # Once migrated, a start changes nothing: the analytics view is not made again.
    ensure_views(database_url)
    with psycopg.connect(database_url) as conn:
        assert _view_oid(conn) == published
    # And the live batches keep the migrated columns.
    applied = first + second
    for batch in later:
        apply(database_url, batch)
        applied += batch
    with psycopg.connect(database_url) as conn:
        assert stored(conn) == windowed(conn) == model(applied)


@pytest.mark.parametrize("engine", ["bulk", "batches"])
def test_an_interrupted_build_of_the_previous_shape_is_migrated_when_it_resumes(
    database_url: str, engine: str
) -> None:
    applied = [event for batch in batches() for event in batch]
    apply(database_url, applied)
    with psycopg.connect(database_url, autocommit=True) as conn:
        live = stored(conn)
        # A build the previous release began and was interrupted in, before its first batch.
        with conn.transaction():
            building = create_version(conn, "occupancy", "building", VIEWS["occupancy"].ddl)
        _previous_tables(conn, building)
    (built,) = rebuild(database_url, ["occupancy"], SOURCE, engine=engine)  # type: ignore[arg-type]
    assert built.version == building.version, "the rerun resumes the interrupted build"
    with psycopg.connect(database_url) as conn:
        assert stored(conn) == windowed(conn) == live == model(applied)
