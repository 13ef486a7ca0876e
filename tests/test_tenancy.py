"""Tenancy by JTE event: API tokens and analyst logins limited to some events see nothing of
the others (real server, real PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import psycopg
import pytest

from service import tokens
from service.config import EventConfig
from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import SECRET, RunningService, bearer, token_headers

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
