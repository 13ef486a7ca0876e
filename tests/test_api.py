"""The analyst API against a seeded JTE event whose answers are known by hand."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psycopg
import pytest

from service import tokens
from service.eventstore.roles import grant_analyst
from service.http.api import PARAMETERS
from service.http.app import create_app
from tests.drill.access import refusal
from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import (
    RunningService,
    analyst_groups,
    api_token,
    bearer,
    drop_roles,
    make_settings,
    token_headers,
)

DAY = "2026-05-14T"


def body(event: str, attendee: dict[str, Any], at: str, delivery_id: str) -> bytes:
    return json.dumps(
        {"event": event, "id": delivery_id, "occurredAt": DAY + at + "Z", "attendee": attendee}
    ).encode()


def person(attendee_id: str, first: str, last: str, role: str, **more: Any) -> dict[str, Any]:
    return {
        "id": attendee_id,
        "firstName": first,
        "lastName": last,
        "email": f"{first.lower()}@example.com",
        "role": role,
        **more,
    }


SEED = [
    body("AttendeeRegistered", person("a-1", "Anna", "Nowak", "speaker"), "08:00:00", "d1"),
    body("AttendeeRegistered", person("a-2", "Jan", "Kowalski", "attendee"), "08:01:00", "d2"),
    body("AttendeeRegistered", person("a-3", "Maria", "Lis", "organizer"), "08:02:00", "d3"),
    body("AttendeeRegistered", person("a-4", "Ola", "Wiśniewska", "attendee"), "08:03:00", "d4"),
    body("AttendeeImported", person("a-5", "Piotr", "Zając", ""), "08:04:00", "d5"),
    body("AttendeeDeleted", {"id": "a-3"}, "08:05:00", "d6"),
    body(
        "AttendeePaymentConfirmed",
        {
            "id": "a-1",
            "payment": {"amount": "349.00", "currency": "PLN", "method": "payu", "reference": "R1"},
        },
        "08:10:00",
        "d7",
    ),
    body(
        "AttendeePaymentConfirmed",
        {
            "id": "a-4",
            "payment": {
                "amount": "100.50",
                "currency": "EUR",
                "method": "bank transfer",
                "reference": "R2",
            },
        },
        "08:11:00",
        "d8",
    ),
    body(
        "AttendeePaymentConfirmed",
        {"id": "a-5", "payment": {"amount": "50.00", "currency": "PLN", "method": "P24"}},
        "08:12:00",
        "d9",
    ),
    body("AttendeeCheckedIn", {"id": "a-1"}, "09:00:00", "d10"),
    body("AttendeeCheckedIn", {"id": "a-2"}, "09:30:00", "d11"),
    body(
        "AttendeeCheckedIn", {"id": "w-1", "firstName": "Walk", "lastName": "In"}, "10:00:00", "d12"
    ),
    body("AttendeeCheckedOut", {"id": "a-1"}, "12:00:00", "d13"),
    body("AttendeeCheckedIn", {"id": "a-1"}, "13:00:00", "d14"),
    body("AttendeeCheckedIn", {"id": "a-2"}, "13:05:00", "d15"),  # a repeat: counted, not applied
]


@pytest.fixture
async def seeded(
    start_service: Callable[..., RunningService], database_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    service = start_service()
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        for delivery in SEED:
            answer = await client.post("/webhooks/jte", content=delivery, headers=token_headers())
            assert answer.status_code == 200
        wait_until_caught_up(database_url)
        token = api_token(database_url, "read")
        client.headers.update(bearer(token))
        yield client, database_url


def cursor(values: list[str]) -> str:
    """A cursor as the API encodes one, holding any `values`."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


async def ids(client: httpx.AsyncClient, query: str) -> list[str]:
    answer = await client.get(f"/v1/events/default/roster{query}")
    assert answer.status_code == 200, answer.text
    return [item["attendee_id"] for item in answer.json()["items"]]


async def test_roster_filters(seeded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = seeded
    # Ordered by last name, first name, id; deleted attendees are hidden by default.
    assert await ids(client, "") == ["w-1", "a-2", "a-1", "a-4", "a-5"]
    assert await ids(client, "?status=all") == ["w-1", "a-2", "a-3", "a-1", "a-4", "a-5"]
    assert await ids(client, "?status=deleted") == ["a-3"]
    assert await ids(client, "?status=unregistered") == ["w-1"]
    assert await ids(client, "?role=speaker") == ["a-1"]
    assert await ids(client, "?checked_in=true") == ["w-1", "a-2", "a-1"]
    assert await ids(client, "?paid=true") == ["a-1", "a-4", "a-5"]
    assert await ids(client, "?paid=false&checked_in=false") == []
    assert await ids(client, "?q=nowak") == ["a-1"]
    assert await ids(client, "?q=WIŚ") == ["a-4"]
    assert await ids(client, "?q=%25") == []  # a literal %, not a wildcard
    assert await ids(client, "?q=anna%20nowak") == ["a-1"]  # the whole name
    assert await ids(client, "?q=ni") == ["a-4"]  # too short for the trigram path
    assert await ids(client, "?q=example.com&status=all") == ["a-2", "a-3", "a-1", "a-4", "a-5"]
    walked, cursor = [], None
    while True:  # a search pages by the same cursor as the plain list
        query = "?q=example.com&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(f"/v1/events/default/roster{query}")).json()
        walked += [item["attendee_id"] for item in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert walked == ["a-2", "a-1", "a-4", "a-5"]
    first = (await client.get("/v1/events/default/roster?q=nowak")).json()["items"][0]
    assert first["amount"] == "349.00" and first["currency"] == "PLN"
    assert first["payment_method"] == "payu" and first["checked_in"] is True
    assert first["fields"]["payment"]["reference"] == "R1"
    a5 = (await client.get("/v1/events/default/roster?q=zaj")).json()["items"][0]
    assert a5["role"] is None and a5["payment_method"] == "przelewy24"


async def test_one_attendee_with_history(seeded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = seeded
    detail = (await client.get("/v1/events/default/attendees/a-1")).json()
    assert detail["attendee"]["status"] == "registered"
    assert detail["presence"]["inside"] is True and detail["presence"]["check_ins"] == 2
    kinds = [h["event_type"] for h in detail["history"]]
    assert kinds == [
        "AttendeeRegistered",
        "AttendeePaymentConfirmed",
        "AttendeeCheckedIn",
        "AttendeeCheckedOut",
        "AttendeeCheckedIn",
    ]
    assert detail["history"][1]["attendee"]["payment"]["amount"] == "349.00"
    assert (await client.get("/v1/events/default/attendees/nobody")).status_code == 404


async def test_occupancy_now_and_at_an_instant(seeded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = seeded
    now = (await client.get("/v1/events/default/occupancy")).json()
    # The whole answer, field for field: it is read from one counters row.
    assert now == {
        "event": "default", "at": None, "inside": 3, "peak": 3, "peak_at": DAY + "10:00:00Z",
        "entries": 4, "exits": 1, "unique_attendees_inside": 3, "check_ins": 5,
        "check_outs": 1, "repeated_check_ins": 1, "stray_check_outs": 0,
    }  # fmt: skip
    at = (await client.get(f"/v1/events/default/occupancy?at={DAY}12:30:00Z")).json()
    assert (at["inside"], at["peak"], at["entries"], at["exits"]) == (2, 3, 3, 1)
    assert at["check_ins"] is None
    early = (await client.get(f"/v1/events/default/occupancy?at={DAY}07:00:00Z")).json()
    assert (early["inside"], early["peak"], early["peak_at"]) == (0, 0, None)


async def test_timeline_buckets(seeded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = seeded
    hourly = (
        await client.get(
            f"/v1/events/default/occupancy/timeline?bucket=1h&from={DAY}08:00:00Z&to={DAY}14:00:00Z"
        )
    ).json()
    assert [(b["entered"], b["exited"], b["inside"]) for b in hourly["buckets"]] == [
        (0, 0, 0),
        (2, 0, 2),
        (1, 0, 3),
        (0, 0, 3),
        (0, 1, 2),
        (1, 0, 3),
    ]
    fine = (
        await client.get(
            f"/v1/events/default/occupancy/timeline?bucket=5m&from={DAY}09:25:00Z&to={DAY}09:40:00Z"
        )
    ).json()
    assert [b["inside"] for b in fine["buckets"]] == [1, 2, 2]
    # Bounds inside a minute are answered from the exact changes.
    exact = (
        await client.get(
            f"/v1/events/default/occupancy/timeline?bucket=15m&from={DAY}09:29:30Z&to={DAY}09:59:30Z"
        )
    ).json()
    assert [b["inside"] for b in exact["buckets"]] == [2, 2]
    default = (await client.get("/v1/events/default/occupancy/timeline?bucket=1h")).json()
    assert default["start"] == DAY + "09:00:00Z" and default["buckets"][-1]["inside"] == 3


async def test_check_ins_and_payments(seeded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = seeded
    latest = (await client.get("/v1/events/default/check-ins?limit=2")).json()["items"]
    assert [(c["attendee_id"], c["at"]) for c in latest] == [
        ("a-2", DAY + "13:05:00Z"),
        ("a-1", DAY + "13:00:00Z"),
    ]
    page = (await client.get("/v1/events/default/payments?limit=2")).json()
    assert [p["amount"] for p in page["items"]] == ["349.00", "100.50"]
    rest = (await client.get(f"/v1/events/default/payments?cursor={page['next_cursor']}")).json()
    assert [(p["amount"], p["method"], p["reference"]) for p in rest["items"]] == [
        ("50.00", "przelewy24", None)
    ]
    assert rest["next_cursor"] is None
    eur = (await client.get("/v1/events/default/payments?currency=eur")).json()["items"]
    assert [(p["method"], p["currency"]) for p in eur] == [("bank_transfer", "EUR")]
    summary = (await client.get("/v1/events/default/payments/summary")).json()
    assert summary["by_currency"] == [
        {"currency": "EUR", "payments": 1, "amount": "100.50"},
        {"currency": "PLN", "payments": 2, "amount": "399.00"},
    ]
    assert {(m["currency"], m["method"]) for m in summary["by_method"]} == {
        ("EUR", "bank_transfer"),
        ("PLN", "payu"),
        ("PLN", "przelewy24"),
    }
    assert summary["by_day"] == [
        {"day": "2026-05-14", "currency": "EUR", "payments": 1, "amount": "100.50"},
        {"day": "2026-05-14", "currency": "PLN", "payments": 2, "amount": "399.00"},
    ]
    events = (await client.get("/v1/events")).json()
    assert events == {
        "events": [{"event": "default", "registered": 4, "inside_now": 3, "timezone": "UTC"}]
    }


@pytest.mark.parametrize(
    "path",
    [
        "/v1/events/default/roster?limit=0",
        "/v1/events/default/roster?limit=abc",
        "/v1/events/default/roster?status=gone",
        "/v1/events/default/roster?checked_in=maybe",
        "/v1/events/default/roster?cursor=not-a-cursor",
        "/v1/events/default/roster?format=xml",
        "/v1/events/default/occupancy?at=yesterday",
        "/v1/events/default/occupancy/timeline?bucket=2m",
        f"/v1/events/default/occupancy/timeline?from={DAY}10:00:00Z&to={DAY}09:00:00Z",
        "/v1/events/default/occupancy/timeline?bucket=5m&from=1970-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "/v1/events/default/payments?cursor=WyJ4Il0",
        # Regressions (found by `scripts/drill hostile`): each of these was a 500.
        "/v1/events/default/roster?cursor=" + cursor(["\u0000", "a", "b"]),
        "/v1/events/default/payments?cursor=" + cursor([DAY + "08:10:00Z", "a\u0000"]),
        "/v1/events/default/payments?cursor=" + cursor(["0001-01-01T00:00:00+14:00", "x"]),
        "/v1/events/default/occupancy?at=0001-01-01T00:00:00%2B14:00",
    ],
)
async def test_bad_parameters_are_400_json(
    seeded: tuple[httpx.AsyncClient, str], path: str
) -> None:
    client, _ = seeded
    answer = await client.get(path)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "bad_parameter"


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("/v1/events/default/roster?bogus=1", "status, role, checked_in, paid, q, limit"),
        ("/v1/events/default/payments?from=", "currency, method, limit, cursor, format"),
        ("/v1/events/default/payments?currency=PLN&to=2026", "currency"),
        ("/v1/events/default/occupancy?tz=UTC", "at, as_of, format, dialect"),  # no tz here
        ("/v1/events/default/occupancy?bucket=5m", "at"),
        ("/v1/events/default/occupancy/timeline?at=x", "bucket, from, to, tz, format"),
        ("/v1/events/default/check-ins?q=x", "limit, format, dialect"),
        ("/v1/events/default/payments/summary?bucket=1h", "tz"),
        ("/v1/events/default/attendees/a-1?history=false", "it takes as_of"),
        ("/v1/events?event=default", "format, dialect"),
        ("/v1/projections?view=roster", "no parameters"),
        ("/v1/events/default/roster?limit=1&limit=2", "`limit` given 2 times"),
        ("/v1/events/default/roster?LIMIT=5", "status, role"),  # names are case-sensitive
    ],
)
async def test_unknown_parameters_are_400_naming_the_known_ones(
    seeded: tuple[httpx.AsyncClient, str], path: str, named: str
) -> None:
    client, _ = seeded
    answer = await client.get(path)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "bad_parameter"
    assert named in answer.json()["message"]


async def test_an_unknown_rebuild_parameter_starts_nothing(
    seeded: tuple[httpx.AsyncClient, str],
) -> None:
    client, database_url = seeded
    admin = bearer(api_token(database_url, "admin"))
    answer = await client.post("/v1/projections/roster/rebuild?skip_posion=true", headers=admin)
    assert answer.status_code == 400 and "skip_poison" in answer.json()["message"]
    views = (await client.get("/v1/projections")).json()["views"]
    assert all(view["rebuilding"] is None for view in views)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/events/",
        "/v1/events/default/roster/",
        "/v1/events/default/payments/summary/",
        "/v1/projections/",
        "/healthz/",
        "/readyz/",
        "/openapi.json/",
    ],
)
async def test_a_trailing_slash_is_not_found_not_redirected(
    seeded: tuple[httpx.AsyncClient, str], path: str
) -> None:
    client, _ = seeded
    answer = await client.get(path)  # httpx does not follow redirects unless asked
    assert answer.status_code == 404, (answer.status_code, answer.headers.get("location"))
    assert answer.json()["error"] == "not_found"


async def test_timeline_of_a_time_at_the_calendars_end_is_no_500(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    # Regression (found by `scripts/drill hostile`): a signed check-in at the end of year
    # 9999 made the default timeline's last bucket overflow datetime, a 500.
    service = start_service()
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        late = body("AttendeeCheckedIn", {"id": "a-9"}, "09:00:00", "late")
        late = late.replace(DAY.encode() + b"09:00:00Z", b"9999-12-31T23:59:59.999999Z")
        answer = await client.post("/webhooks/jte", content=late, headers=token_headers())
        assert answer.json()["status"] == "accepted"
        wait_until_caught_up(database_url)
        client.headers.update(bearer(api_token(database_url)))
        for bucket in ("5m", "1h"):
            timeline = await client.get(f"/v1/events/default/occupancy/timeline?bucket={bucket}")
            assert timeline.status_code == 200, timeline.text
            assert timeline.json()["end"] == "9999-01-01T00:00:00Z"


async def test_unknown_event_is_404(seeded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = seeded
    for path in ("roster", "occupancy", "payments/summary", "occupancy/timeline", "check-ins"):
        answer = await client.get(f"/v1/events/elsewhere/{path}")
        assert answer.status_code == 404 and answer.json()["error"] == "unknown_event"


async def test_csv_equals_json(seeded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = seeded
    json_rows = (await client.get("/v1/events/default/roster?status=all&limit=1000")).json()[
        "items"
    ]
    answer = await client.get(
        "/v1/events/default/roster?status=all", headers={"accept": "text/csv"}
    )
    assert answer.headers["content-type"].startswith("text/csv")
    csv_rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [r["attendee_id"] for r in csv_rows] == [r["attendee_id"] for r in json_rows]
    for from_csv, from_json in zip(csv_rows, json_rows, strict=True):
        for key in ("status", "email", "first_name", "amount", "currency", "payment_method"):
            assert from_csv[key] == (from_json[key] or ""), key
        assert from_csv["checked_in"] == str(from_json["checked_in"]).lower()
        assert json.loads(from_csv["fields"]) == from_json["fields"]
        for key in ("first_seen_at", "registered_at", "deleted_at", "last_check_in_at"):
            assert from_csv[key] == (from_json[key] or ""), key  # the same time text as JSON
    payments_csv = (await client.get("/v1/events/default/payments?format=csv")).text
    assert [r["amount"] for r in csv.DictReader(io.StringIO(payments_csv))] == [
        "349.00",
        "100.50",
        "50.00",
    ]
    timeline_csv = (
        await client.get("/v1/events/default/occupancy/timeline?bucket=1h&format=csv")
    ).text
    assert list(csv.DictReader(io.StringIO(timeline_csv)))[-1]["inside"] == "3"
    empty = await client.get("/v1/events/default/roster?format=csv&q=nobody-like-this")
    assert empty.text.splitlines() == [empty.text.splitlines()[0]]  # just the header


async def test_pagination_walks_everyone_once_while_deliveries_arrive(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service()
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        for n in range(60):
            who = person(f"p-{n:03d}", f"F{n % 7}", f"Last{n:03d}", "attendee")
            await client.post(
                "/webhooks/jte",
                content=body("AttendeeRegistered", who, "08:00:00", f"r{n}"),
                headers=token_headers(),
            )
        wait_until_caught_up(database_url)
        client.headers.update(bearer(api_token(database_url)))
        seen: list[str] = []
        cursor, arrived = None, 0
        while True:
            query = "?limit=7" + (f"&cursor={cursor}" if cursor else "")
            page = (await client.get(f"/v1/events/default/roster{query}")).json()
            seen += [item["attendee_id"] for item in page["items"]]
            # Newcomers sort before and after the cursor while the walk goes on.
            for name in (f"Aaa{arrived}", f"Zzz{arrived}"):
                who = person(f"n-{name}", "New", name, "attendee")
                await client.post(
                    "/webhooks/jte",
                    content=body("AttendeeRegistered", who, "09:00:00", f"n-{name}"),
                    headers=token_headers(),
                )
            arrived += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert len(seen) == len(set(seen)), "no attendee twice"
    assert {f"p-{n:03d}" for n in range(60)} <= set(seen), "nobody who was there is missed"


async def test_tokens_and_scopes(seeded: tuple[httpx.AsyncClient, str]) -> None:
    client, database_url = seeded
    anonymous = httpx.AsyncClient(base_url=str(client.base_url))
    async with anonymous:
        missing = await anonymous.get("/v1/events/default/roster")
        assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
        wrong = await anonymous.get("/v1/events/default/roster", headers=bearer("rc_guess"))
        assert wrong.status_code == 401
        read = await anonymous.post("/v1/projections/roster/rebuild", headers=client.headers)
        assert read.status_code == 403 and read.json()["error"] == "forbidden"
        admin = bearer(api_token(database_url, "admin"))
        assert (await anonymous.get("/v1/events", headers=admin)).status_code == 200
        unknown = await anonymous.post("/v1/projections/everything/rebuild", headers=admin)
        assert unknown.status_code == 404
        odd = await anonymous.post(
            "/v1/projections/payments/rebuild?skip_poison=maybe", headers=admin
        )
        assert odd.status_code == 400 and "skip_poison" in odd.json()["message"]
        started = await anonymous.post(
            "/v1/projections/payments/rebuild?skip_poison=true", headers=admin
        )
        assert started.status_code == 202 and started.json()["views"] == ["payments"]
        # The webhook route needs only its signature, never a token.
        assert (
            await anonymous.post("/webhooks/jte", content=SEED[0], headers=token_headers())
        ).status_code == 200
    with psycopg.connect(database_url) as conn:
        hashes = [row[0] for row in conn.execute("SELECT hash FROM rollcall.api_tokens").fetchall()]
    assert all(len(h) == 64 and not h.startswith("rc_") for h in hashes), "stored hashed only"
    for _ in range(100):  # the rebuild swaps in a new payments version
        async with httpx.AsyncClient(base_url=str(client.base_url)) as fresh:
            views = (await fresh.get("/v1/projections", headers=client.headers)).json()["views"]
        if next(v for v in views if v["view"] == "payments")["version"] == 2:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the rebuild did not swap in")


async def test_a_revoked_token_stops_working_within_the_cache_time(
    seeded: tuple[httpx.AsyncClient, str],
) -> None:
    client, database_url = seeded
    with psycopg.connect(database_url, autocommit=True) as conn:
        leaver = tokens.issue(conn, "read", "leaver")
    async with httpx.AsyncClient(base_url=str(client.base_url), headers=bearer(leaver)) as own:
        assert (await own.get("/v1/events")).status_code == 200
        with psycopg.connect(database_url, autocommit=True) as conn:
            assert tokens.revoke(conn, "leaver") == 1
        await asyncio.sleep(tokens.CACHE_SECONDS + 0.1)
        refused = await own.get("/v1/events")
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        # Other tokens are untouched.
        assert (await client.get("/v1/events")).status_code == 200


def test_analyst_role_reads_analytics_and_nothing_else(
    database_url: str, server_url: str, tmp_path: Any
) -> None:
    from projections.runner import ensure_views

    login = f"analyst_{uuid.uuid4().hex[:8]}"  # roles are server-wide: a name of its own
    ensure_views(database_url)
    from service.eventstore.store import DeliveryStore

    DeliveryStore(database_url).close()  # the event store's tables exist
    with psycopg.connect(database_url, autocommit=True) as conn:
        password = grant_analyst(conn, login)
        again = grant_analyst(conn, login, "chosen-password")
    assert password and again == "chosen-password"
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    params.update(user=login, password="chosen-password")
    try:
        with psycopg.connect(**params, autocommit=True) as analyst:  # type: ignore[arg-type]
            assert analyst.execute("SELECT count(*) FROM analytics.roster").fetchone() == (0,)
            assert refusal(analyst, "CREATE TABLE public.mine (x int)") == "read-only"
            # Read-only is only the session's default, which the analyst may turn off: each
            # statement must then fail for want of a privilege, not for any other reason.
            analyst.execute("SET default_transaction_read_only = off")
            forbidden = [
                "SELECT * FROM rollcall.deliveries_events",
                "SELECT * FROM rollcall.api_tokens",
                "SELECT * FROM rollcall_views.roster_v1",
                "INSERT INTO analytics.payments (event, entry_key) VALUES ('x', 'y')",
                "CREATE TABLE analytics.mine (x int)",
                "CREATE TABLE public.mine (x int)",
            ]
            assert {s: refusal(analyst, s) for s in forbidden} == dict.fromkeys(
                forbidden, "no privilege"
            )
    finally:
        drop_roles(server_url, [database_url], [login, *analyst_groups(server_url, login)])


async def test_openapi_describes_every_route(
    seeded: tuple[httpx.AsyncClient, str], tmp_path: Any
) -> None:
    client, database_url = seeded
    served = (await client.get("/openapi.json")).json()
    assert served["openapi"] == "3.1.0"
    app = create_app(make_settings(database_url, tmp_path))
    routes = {route.path for route in app.routes.routes}  # type: ignore[attr-defined]
    described = set(served["paths"])
    assert routes - {"/dashboard/{asset}"} <= described
    assert {"/webhooks/jte", "/webhooks/jte/{event}"} <= described  # served by the intake path
    # The query parameters documented are exactly those each route accepts (others are 400).
    admin = bearer(api_token(database_url, "admin"))
    for path, methods in served["paths"].items():
        for method, operation in methods.items():
            documented = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
            accepted = PARAMETERS.get(f"{method.upper()} {path}", PARAMETERS.get(path, ()))
            assert documented == set(accepted), (method, path)
            if method != "get" or not path.startswith("/v1/"):
                continue
            # And the running service agrees: an undocumented parameter is a 400 naming
            # exactly the documented ones.
            url = path.replace("{event}", "default").replace("{attendee_id}", "a-1")
            # An admin token: the admin routes check their parameters too.
            answer = await client.get(url, params={"bogus": "1"}, headers=admin)
            assert answer.status_code == 400, (path, answer.text)
            for name in documented:
                assert name in answer.json()["message"], (path, name, answer.text)


async def metric_values(client: httpx.AsyncClient) -> dict[str, float]:
    """Every sample /metrics serves, by name and labels."""
    text = (await client.get("/metrics")).text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


async def test_metrics_count_what_happened(seeded: tuple[httpx.AsyncClient, str]) -> None:
    # Counters are process-wide (other tests' servers ran in this process): compare this
    # test's own before and after, exactly.
    client, database_url = seeded
    before = await metric_values(client)
    new = body("AttendeeCheckedIn", {"id": "a-2"}, "12:00:00", "d-metrics")
    assert (await client.post("/webhooks/jte", content=new, headers=token_headers())).json()[
        "status"
    ] == "accepted"
    duplicate = await client.post("/webhooks/jte", content=SEED[0], headers=token_headers())
    assert duplicate.json() == {"status": "duplicate"}
    wrong = await client.post("/webhooks/jte", content=SEED[0], headers=token_headers("wrong"))
    assert wrong.status_code == 401
    wait_until_caught_up(database_url)
    after = await metric_values(client)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta('rollcall_deliveries_total{event="default",outcome="accepted"}') == 1
    assert delta('rollcall_deliveries_total{event="default",outcome="duplicate"}') == 1
    assert delta('rollcall_rejections_total{reason="secret_mismatch"}') == 1
    assert delta("rollcall_append_seconds_count") == 2  # one batch each: accepted, duplicate
    with psycopg.connect(database_url) as conn:
        head = conn.execute("SELECT max(notification_id) FROM rollcall.deliveries_events")
        (stored,) = head.fetchone() or (None,)
    assert after["rollcall_store_head"] == stored == before["rollcall_store_head"] + 1
    for view in ("roster", "occupancy", "payments"):
        assert after[f'rollcall_projection_position{{view="{view}"}}'] == stored
        assert after[f'rollcall_projection_lag_events{{view="{view}"}}'] == 0
