"""Two roles per database (`rollcall db setup`): the runtime role serves, and cannot change or
unprotect stored deliveries; analysts of one database read nothing of another."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from projections import schema
from projections.rebuild import build_as_of, rebuild
from projections.registry import VIEW_NAMES
from projections.runner import Runner, ensure_views
from service import tokens
from service.eventstore.database import Unusable
from service.eventstore.roles import Setup, grant_analyst, role_name, set_up
from service.eventstore.source import SOURCE
from service.eventstore.store import DeliveryStore
from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import (
    RunningService,
    analyst_groups,
    as_role,
    bearer,
    delivery,
    drop_roles,
    make_settings,
    recorded,
    stored_rows,
    token_headers,
)

# Each must fail for the runtime role: together, they would switch append-only off.
CHANGES: tuple[str, ...] = (
    "UPDATE rollcall.deliveries_events SET topic = 'forged'",
    "DELETE FROM rollcall.deliveries_events",
    "TRUNCATE rollcall.deliveries_events",
    "ALTER TABLE rollcall.deliveries_events DISABLE TRIGGER append_only",
    "ALTER TABLE rollcall.deliveries_events DISABLE TRIGGER ALL",
    "ALTER TABLE rollcall.deliveries_events ADD COLUMN forged text",
    "DROP TRIGGER append_only ON rollcall.deliveries_events",
    "DROP TABLE rollcall.deliveries_events",
    "CREATE OR REPLACE FUNCTION rollcall.refuse_change() RETURNS trigger LANGUAGE plpgsql "
    "AS $$ BEGIN RETURN OLD; END $$",
    "CREATE RULE forged AS ON UPDATE TO rollcall.deliveries_events DO INSTEAD NOTHING",
    "CREATE TABLE rollcall.mine (x int)",
)


def _names(database_url: str) -> list[str]:
    database = str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])
    return [role_name(database, p) for p in ("owner", "runtime", "analysts")]


@pytest.fixture
def two_roles(server_url: str, database_url: str) -> Iterator[Setup]:
    """A fresh database set up for two roles; the database and its roles dropped afterwards."""
    try:
        yield set_up(database_url)
    finally:
        drop_roles(server_url, [database_url], _names(database_url))


def test_the_runtime_role_cannot_change_or_unprotect_stored_deliveries(
    two_roles: Setup, database_url: str
) -> None:
    runtime_url = two_roles.runtime_url
    store = DeliveryStore(runtime_url)
    try:
        assert store.append([recorded(delivery(attendee_id="kept"))]) == [1]
    finally:
        store.close()
    allowed = []
    for statement in CHANGES:
        with psycopg.connect(runtime_url, autocommit=True) as conn:
            try:
                conn.execute(statement)
                allowed.append(statement)
            except psycopg.errors.InsufficientPrivilege:
                pass
    with psycopg.connect(runtime_url) as conn:
        try:
            # Taking the table lock directly needs UPDATE, DELETE or TRUNCATE rights.
            conn.execute("LOCK TABLE rollcall.deliveries_events IN EXCLUSIVE MODE")
            allowed.append("LOCK TABLE")
        except psycopg.errors.InsufficientPrivilege:
            pass
    with psycopg.connect(runtime_url, autocommit=True) as conn:
        # Without grant options this is only a warning; the right must still be missing.
        conn.execute("GRANT UPDATE, DELETE, TRUNCATE ON rollcall.deliveries_events TO PUBLIC")
        rights = conn.execute(
            "SELECT has_table_privilege(current_user, 'rollcall.deliveries_events', "
            "'UPDATE, DELETE, TRUNCATE, TRIGGER, REFERENCES')"
        ).fetchone()
    assert allowed == [] and rights == (False,)
    [row] = stored_rows(database_url)
    assert b"kept" in row["body"] and row["topic"].endswith("DeliveryRecorded")
    with psycopg.connect(database_url) as conn:
        triggers = conn.execute(
            "SELECT tgname, tgenabled FROM pg_trigger "
            "WHERE tgrelid = 'rollcall.deliveries_events'::regclass ORDER BY tgname"
        ).fetchall()
        owner = conn.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'rollcall' "
            "AND tablename = 'deliveries_events'"
        ).fetchone()
    assert triggers == [("append_only", "O"), ("no_truncate", "O")]
    assert owner == (two_roles.owner,)


def test_the_runtime_role_serves_projects_rebuilds_and_issues_tokens(
    two_roles: Setup, tmp_path: Path
) -> None:
    runtime_url = two_roles.runtime_url
    service = RunningService(make_settings(runtime_url, tmp_path))
    service.start()
    try:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            for n in range(5):
                body = delivery("AttendeeCheckedIn", attendee_id=f"a-{n}", delivery_id=f"d-{n}")
                answer = client.post("/webhooks/jte", content=body, headers=token_headers())
                assert answer.json()["status"] == "accepted"
            wait_until_caught_up(runtime_url, 60)
            with psycopg.connect(runtime_url, autocommit=True) as conn:
                token = tokens.issue(conn, "read", "runtime")
            roster = client.get("/v1/events/default/roster", headers=bearer(token))
            assert roster.status_code == 200 and len(roster.json()["items"]) == 5
            assert client.get("/readyz").json()["status"] == "ready"
    finally:
        service.stop()
    rebuilt = rebuild(runtime_url, VIEW_NAMES, SOURCE)
    assert [v.version for v in rebuilt] == [2] * len(VIEW_NAMES)
    schema_name = build_as_of(runtime_url, ["roster"], SOURCE, datetime.now(UTC))
    with psycopg.connect(runtime_url) as conn:
        [count] = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.roster").format(sql.Identifier(schema_name))
        ).fetchone() or (0,)
    assert count == 5


def test_db_setup_takes_over_a_one_role_database_and_keeps_the_runtime_password(
    server_url: str, database_url: str
) -> None:
    # The database as an older rollcall left it: everything made by one role (root here).
    store = DeliveryStore(database_url)
    store.append([recorded(delivery(attendee_id=f"a-{n}")) for n in range(3)])
    store.close()
    Runner(database_url, SOURCE).catch_up()
    try:
        first = set_up(database_url)
        again = set_up(database_url)
        assert first.password_set and not again.password_set
        assert "password" not in psycopg.conninfo.conninfo_to_dict(again.runtime_url)
        chosen = set_up(database_url, password="chosen-password")
        assert chosen.password_set and "chosen-password" in chosen.runtime_url
        # The views an older release made are now the runtime role's to replace.
        assert [v.version for v in rebuild(first.runtime_url, VIEW_NAMES, SOURCE)] == [2] * len(
            VIEW_NAMES
        )
        with psycopg.connect(first.runtime_url) as conn:
            assert conn.execute("SELECT count(*) FROM analytics.roster").fetchone() == (3,)
            public = conn.execute(
                "SELECT has_database_privilege('public', current_database(), 'CONNECT')"
            ).fetchone()
        assert public == (False,)
    finally:
        drop_roles(server_url, [database_url], _names(database_url))


def test_a_role_of_that_name_not_made_by_rollcall_is_refused(
    server_url: str, database_url: str
) -> None:
    runtime = _names(database_url)[1]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(runtime)))
    try:
        with pytest.raises(Unusable, match=f"role {runtime} exists but is not rollcall's"):
            set_up(database_url)
    finally:
        drop_roles(server_url, [database_url], _names(database_url))


def test_an_analyst_of_one_database_reads_nothing_of_another(
    server_url: str, new_database: Callable[[], str]
) -> None:
    granted, other = new_database(), new_database()
    login = f"analyst_{uuid.uuid4().hex[:8]}"
    groups: list[str] = []
    try:
        ensure_views(granted)
        with psycopg.connect(granted, autocommit=True) as conn:
            password = grant_analyst(conn, login, "analyst-password")
        groups = analyst_groups(server_url, login)
        # The other database is served (and its views published) after the grant: nobody
        # ran grant-analyst there.
        store = DeliveryStore(other)
        store.append([recorded(delivery(attendee_id=f"b-{n}")) for n in range(3)])
        store.close()
        Runner(other, SOURCE).catch_up()
        rebuild(other, VIEW_NAMES, SOURCE)
        with psycopg.connect(as_role(granted, login, password)) as analyst:
            assert analyst.execute("SELECT count(*) FROM analytics.roster").fetchone() == (0,)
        read = []
        for view in ("roster", "attendee_deliveries", "presence", "occupancy", "payments"):
            try:
                with psycopg.connect(as_role(other, login, password)) as analyst:
                    analyst.execute(f"SELECT count(*) FROM analytics.{view}")
                    read.append(view)
            except psycopg.errors.InsufficientPrivilege:
                pass  # refused, as it must be
        assert read == []
    finally:
        roles = [login, *groups, *_names(granted), *_names(other)]
        drop_roles(server_url, [granted, other], roles)


def test_the_old_server_wide_group_loses_what_it_held_here(
    server_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    legacy = f"legacy_{uuid.uuid4().hex[:8]}"  # stands for rollcall_analyst, shared server-wide
    monkeypatch.setattr(schema, "LEGACY_ANALYST_GROUP", legacy)
    ensure_views(database_url)
    group = sql.Identifier(legacy)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(group))
        conn.execute(
            sql.SQL(
                "GRANT USAGE ON SCHEMA analytics TO {0}; "
                "GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO {0}"
            ).format(group)
        )
    try:
        ensure_views(database_url)
        with psycopg.connect(database_url) as conn:
            held = conn.execute(
                "SELECT has_schema_privilege(%s, 'analytics', 'USAGE'), "
                "has_table_privilege(%s, 'analytics.roster', 'SELECT')",
                (legacy, legacy),
            ).fetchone()
        assert held == (False, False)
    finally:
        drop_roles(server_url, [database_url], [legacy])
