"""The roster's narrow search table (projections/roster.py): in step with every write to the
roster, whoever makes it, and made for a live version that predates it."""

from __future__ import annotations

import asyncpg
import psycopg
import pytest
from psycopg import sql

from projections import roster
from projections.rebuild import rebuild
from projections.runner import Runner, ensure_views
from projections.schema import VIEWS_SCHEMA, live_version
from service.eventstore.source import SOURCE
from service.eventstore.store import DeliveryStore
from tests.helpers import delivery, recorded

EXPECTED = (
    "SELECT event, attendee_id, status, role, checked_in, paid, "
    "coalesce(lower(last_name), ''), coalesce(lower(first_name), ''), "
    "coalesce(first_name, '') || ' ' || coalesce(last_name, '') || ' ' || coalesce(email, ''), "
    "lower(coalesce(first_name, '') || ' ' || coalesce(last_name, '') || ' ' "
    "|| coalesce(email, '')) FROM analytics.roster ORDER BY 1, 2"
)
FOUND = (
    "SELECT event, attendee_id, status, role, checked_in, paid, k1, k2, search, search_folded "
    "FROM analytics.roster_search ORDER BY 1, 2"
)


def append(database_url: str, bodies: list[bytes]) -> None:
    store = DeliveryStore(database_url)
    try:
        store.append([recorded(body) for body in bodies])
    finally:
        store.close()


def search_rows(database_url: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(EXPECTED).fetchall(), conn.execute(FOUND).fetchall()


def test_the_search_table_follows_every_write_to_the_roster(database_url: str) -> None:
    append(database_url, [delivery(attendee_id=f"s-{n}") for n in range(20)])
    Runner(database_url, SOURCE).catch_up()
    expected, found = search_rows(database_url)
    assert len(found) == 20 and found == expected
    append(
        database_url,
        [
            delivery("AttendeeUpdated", attendee_id="s-1"),
            delivery("AttendeeDeleted", attendee_id="s-2"),
        ],
    )
    Runner(database_url, SOURCE).catch_up()
    expected, found = search_rows(database_url)
    assert found == expected
    assert any(row[1] == "s-2" and row[2] == "deleted" for row in found)
    # A writer other than the fold (an erasure, say) changes the roster: the search follows.
    with psycopg.connect(database_url) as conn:
        version = live_version(conn, "roster")
        assert version is not None
        conn.execute(
            sql.SQL("UPDATE {} SET first_name = NULL, last_name = NULL, email = NULL").format(
                version.table("roster")
            )
        )
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE attendee_id = 's-3'").format(version.table("roster"))
        )
    expected, found = search_rows(database_url)
    assert found == expected and len(found) == 19
    assert all(row[8] == row[9] == "  " for row in found), "no name or email is left to search"


def test_a_live_roster_made_before_the_search_table_gets_it_on_start(database_url: str) -> None:
    append(database_url, [delivery(attendee_id=f"o-{n}") for n in range(10)])
    Runner(database_url, SOURCE).catch_up()
    with psycopg.connect(database_url) as conn:
        version = live_version(conn, "roster")
        assert version is not None
        # As an earlier release left it: no search table, triggers, function or analytics view.
        conn.execute("DROP VIEW analytics.roster_search")
        conn.execute(sql.SQL("DROP TABLE {} CASCADE").format(version.table("roster_search")))
        for op in ("insert", "update", "delete"):
            conn.execute(
                sql.SQL("DROP TRIGGER {} ON {}").format(
                    sql.Identifier(f"search_{op}"), version.table("roster")
                )
            )
    ensure_views(database_url)
    expected, found = search_rows(database_url)
    assert len(found) == 10 and found == expected
    append(database_url, [delivery(attendee_id="o-new")])
    Runner(database_url, SOURCE).catch_up()
    expected, found = search_rows(database_url)
    assert len(found) == 11 and found == expected


async def test_a_search_matches_any_case_through_the_folded_text_and_without_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    append(database_url, [delivery(attendee_id=f"f-{n}") for n in range(4)])
    wisniewska = delivery(attendee_id="f-w").replace(
        b'"Ola"', b'"Ola", "lastName": "Wi\\u015bniewska"'
    )
    append(database_url, [wisniewska])
    Runner(database_url, SOURCE).catch_up()
    monkeypatch.setattr(roster, "_FOLDED", roster._FoldedSearch())
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:

        async def found(q: str) -> list[str]:
            items, _ = await roster.page(pool, "default", roster.Filter(q=q), 50, None)
            return [a.attendee_id for a in items]

        folded = {q: await found(q) for q in ("OLA", "WI\u015a", "f-w@EXAMPLE", "%la")}
        assert folded == {
            "OLA": ["f-0", "f-1", "f-2", "f-3", "f-w"],
            "WI\u015a": ["f-w"],
            "f-w@EXAMPLE": ["f-w"],
            "%la": [],
        }
        # As a release before the folded text left the view: searched with ILIKE instead.
        with psycopg.connect(database_url) as conn:
            version = live_version(conn, "roster")
            assert version is not None
            conn.execute("DROP VIEW analytics.roster_search")
            conn.execute(
                sql.SQL(
                    "CREATE VIEW analytics.roster_search AS SELECT slug AS event, attendee_id, "
                    "status, role, checked_in, paid, k1, k2, search FROM {}"
                ).format(version.table("roster_search"))
            )
        assert {q: await found(q) for q in folded} == folded
    finally:
        await pool.close()


def test_a_live_roster_loses_the_wide_search_index_on_start(database_url: str) -> None:
    append(database_url, [delivery(attendee_id=f"g-{n}") for n in range(5)])
    Runner(database_url, SOURCE).catch_up()
    with psycopg.connect(database_url, autocommit=True) as conn:
        version = live_version(conn, "roster")
        assert version is not None
        name = f"roster_v{version.version}_search"
        # As an earlier release left it: a trigram index on the wide roster's search text.
        conn.execute(
            sql.SQL("CREATE INDEX {} ON {} USING gin (({}) gin_trgm_ops)").format(
                sql.Identifier(name), version.table("roster"), sql.SQL(roster.SEARCH_TEXT)
            )
        )
        ensure_views(database_url)
        row = conn.execute("SELECT to_regclass(%s)", (f"rollcall_views.{name}",)).fetchone()
        assert row is not None and row[0] is None
    expected, found = search_rows(database_url)
    assert len(found) == 5 and found == expected


def name_index(database_url: str) -> str | None:
    """The definition of the live search table's name-order index, if it has one."""
    with psycopg.connect(database_url) as conn:
        version = live_version(conn, "roster")
        assert version is not None
        row = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
            (VIEWS_SCHEMA, f"roster_search_v{version.version}_name"),
        ).fetchone()
    return None if row is None else str(row[0])


def test_a_live_search_table_made_before_the_name_index_gets_it_on_start(
    database_url: str,
) -> None:
    append(database_url, [delivery(attendee_id=f"n-{n}") for n in range(5)])
    Runner(database_url, SOURCE).catch_up()
    made = name_index(database_url)
    assert made is not None and made.endswith("USING btree (slug, k1, k2, attendee_id)")
    with psycopg.connect(database_url) as conn:
        version = live_version(conn, "roster")
        assert version is not None
        # As the previous release left it: the search table, but no name index.
        conn.execute(
            sql.SQL("DROP INDEX {}").format(
                sql.Identifier(VIEWS_SCHEMA, f"roster_search_v{version.version}_name")
            )
        )
    assert name_index(database_url) is None
    ensure_views(database_url)
    assert name_index(database_url) == made
    # A bulk rebuild makes it on the new version too (after filling the table).
    rebuild(database_url, ["roster"], SOURCE)
    rebuilt = name_index(database_url)
    assert rebuilt is not None and rebuilt.endswith("USING btree (slug, k1, k2, attendee_id)")
