"""Tenancy by JTE event: API tokens and analyst logins limited to some events see nothing of
the others (real server, real PostgreSQL)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from projections.rebuild import rebuild
from projections.registry import VIEW_NAMES
from service import tokens
from service.config import EventConfig
from service.eventstore.roles import grant_analyst, role_name
from service.eventstore.source import SOURCE
from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import SECRET, RunningService, as_role, bearer, drop_roles, token_headers

EVENTS = {
    "alpha": EventConfig(slug="alpha", secrets=(SECRET,)),
    "beta": EventConfig(slug="beta", secrets=(SECRET,)),
}


def registered(attendee_id: str, email: str) -> bytes:
    return json.dumps(
        {
            "event": "AttendeeRegistered",
            "id": f"d-{attendee_id}",
            "occurredAt": "2026-05-14T08:00:00Z",
            "attendee": {"id": attendee_id, "email": email, "firstName": attendee_id},
        }
    ).encode()


def token(database_url: str, scope: tokens.Scope, events: list[str] | None) -> dict[str, str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return bearer(tokens.issue(conn, scope, f"{scope}-{events}", events))


@pytest.fixture
async def two_events(
    start_service: Callable[..., RunningService], database_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    service = start_service(events=EVENTS)
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        for slug, attendee, email in (
            ("alpha", "a-1", "ala@alpha.example"),
            ("beta", "b-1", "bea@beta.example"),
        ):
            answer = await client.post(
                f"/webhooks/jte/{slug}",
                content=registered(attendee, email),
                headers=token_headers(),
            )
            assert answer.status_code == 200
        wait_until_caught_up(database_url)
        yield client, database_url


async def test_a_token_for_one_event_gets_404_on_the_others(
    two_events: tuple[httpx.AsyncClient, str],
) -> None:
    client, database_url = two_events
    alpha = token(database_url, "read", ["alpha"])
    everyone = token(database_url, "read", None)
    paths = [
        "/v1/events/{}/roster",
        "/v1/events/{}/roster?format=csv",
        "/v1/events/{}/attendees/a-1",
        "/v1/events/{}/occupancy",
        "/v1/events/{}/occupancy/timeline?format=csv",
        "/v1/events/{}/check-ins",
        "/v1/events/{}/payments",
        "/v1/events/{}/payments?format=csv",
        "/v1/events/{}/payments/summary",
    ]
    for path in paths:
        hidden = await client.get(path.format("beta"), headers=alpha)
        assert hidden.status_code == 404, path
        assert hidden.json()["error"] == "unknown_event"
        assert "b-1" not in hidden.text and "bea@" not in hidden.text
        for slug, headers in (("alpha", alpha), ("beta", everyone)):
            shown = await client.get(path.format(slug), headers=headers)
            assert shown.status_code == 200 or shown.json()["error"] != "unknown_event", path
    roster = (await client.get("/v1/events/alpha/roster", headers=alpha)).json()
    assert [a["attendee_id"] for a in roster["items"]] == ["a-1"]
    # The dashboard's data: the event list holds only the token's events.
    listed = (await client.get("/v1/events", headers=alpha)).json()
    assert [e["event"] for e in listed["events"]] == ["alpha"]
    listed = (await client.get("/v1/events", headers=everyone)).json()
    assert [e["event"] for e in listed["events"]] == ["alpha", "beta"]
    # Not found is not found: the same answer as for an event that does not exist.
    unknown = (await client.get("/v1/events/gamma/roster", headers=alpha)).json()
    hidden = (await client.get("/v1/events/beta/roster", headers=alpha)).json()
    assert hidden["error"] == unknown["error"] == "unknown_event"


async def test_an_admin_token_for_one_event_erases_and_finds_only_there(
    two_events: tuple[httpx.AsyncClient, str],
) -> None:
    client, database_url = two_events
    alpha = token(database_url, "admin", ["alpha"])
    assert (await client.delete("/v1/events/beta/attendees/b-1", headers=alpha)).status_code == 404
    found = await client.get("/v1/subjects", params={"email": "bea@beta.example"}, headers=alpha)
    assert found.json() == {"email_found": False, "subjects": []}
    exported = await client.get(
        "/v1/subjects/export", params={"email": "bea@beta.example"}, headers=alpha
    )
    assert exported.json()["subjects"] == []
    rebuild = await client.post("/v1/projections/roster/rebuild", headers=alpha)
    assert rebuild.status_code == 403
    beta = await client.get(
        "/v1/events/beta/attendees/b-1", headers=token(database_url, "read", None)
    )
    assert beta.json()["attendee"]["email"] == "bea@beta.example"
    assert (await client.delete("/v1/events/alpha/attendees/a-1", headers=alpha)).status_code == 200


async def test_an_analyst_for_one_event_cannot_see_the_others_by_any_query(
    two_events: tuple[httpx.AsyncClient, str], server_url: str
) -> None:
    _, database_url = two_events
    login = f"analyst_{uuid.uuid4().hex[:8]}"  # roles are server-wide: a name of its own
    with psycopg.connect(database_url, autocommit=True) as conn:
        grant_analyst(conn, login, "pw", ["alpha"])
        conn.execute("ANALYZE")  # statistics exist: pg_stats must not show them either
        group = role_name(conn.info.dbname, "analysts")
    try:
        with psycopg.connect(as_role(database_url, login, "pw"), autocommit=True) as analyst:
            _sees_alpha_only(analyst, login)
        # A rebuild swaps every analytics view: the limited ones are made again, still limited.
        rebuild(database_url, list(VIEW_NAMES), SOURCE)
        with psycopg.connect(as_role(database_url, login, "pw"), autocommit=True) as analyst:
            _sees_alpha_only(analyst, login)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(login)))
        drop_roles(server_url, [database_url], [login, group])


def _sees_alpha_only(analyst: psycopg.Connection[Any], login: str) -> None:
    rows = analyst.execute("SELECT event, attendee_id, email FROM roster").fetchall()
    assert rows == [("alpha", "a-1", "ala@alpha.example")]
    views = [
        row[0]
        for row in analyst.execute(
            "SELECT table_name FROM information_schema.views WHERE table_schema = %s",
            (f"analytics_for_{login}",),
        )
    ]
    assert {"roster", "payments", "presence", "occupancy", "payment_totals"} <= set(views)
    for view in views:
        events = analyst.execute(
            sql.SQL("SELECT DISTINCT event FROM {}").format(sql.Identifier(view))
        )
        assert {row[0] for row in events} <= {"alpha"}, view
    for forbidden in (
        "SELECT * FROM analytics.roster",
        "SELECT * FROM analytics.payments",
        "SELECT * FROM rollcall_views.roster_v1",
        "SELECT * FROM rollcall.deliveries_events",
        "SELECT * FROM rollcall.data_keys",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute(forbidden)
    # A function that fails on a value shows that value: behind the barrier, only alpha's.
    with pytest.raises(psycopg.errors.InvalidTextRepresentation) as failed:
        analyst.execute("SELECT * FROM roster WHERE email::int = 0")
    assert "bea@beta.example" not in str(failed.value)
    assert analyst.execute(
        "SELECT count(*) FROM pg_stats WHERE schemaname IN ('rollcall_views', 'rollcall')"
    ).fetchone() == (0,)
