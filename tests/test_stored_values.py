"""Whatever a signed delivery holds, the views store only what PostgreSQL can always read back:
every read of the roster (JSON, CSV, one attendee, SQL, a rebuild) answers."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import psycopg
import pytest

from domain.roster import RosterEntry
from projections import roster
from projections.columns import MAX_DIGITS, json_text, storable_number
from projections.rebuild import rebuild
from service.eventstore.source import SOURCE
from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import RunningService, api_token, bearer, token_headers

# Each was accepted, then broke every read of its event's roster ("value overflows numeric
# format" when `fields` is cast to jsonb), or would print as hundreds of kilobytes.
HOSTILE_NUMBERS = [
    "1e200000",
    "-1e200000",
    "1e-200000",
    "0." + "1" * 20_000,
    "1e131072",
    "1e1000",
    "1" + "0" * 1_000 + ".5",
]
ORDINARY_NUMBERS = ["0", "-12.50", "349.00", "1e3", "123456789012345678901234567890", "1e-999"]


def _registration(attendee_id: str, number: str) -> bytes:
    return (
        b'{"event":"AttendeeRegistered","id":"reg-%s","occurredAt":"2026-05-14T08:00:00Z",'
        b'"attendee":{"id":"%s","firstName":"Ola","lastName":"Nowak","customField":%s,'
        b'"nested":{"list":[%s]}}}'
        % (attendee_id.encode(), attendee_id.encode(), number.encode(), number.encode())
    )


@pytest.mark.parametrize("number", HOSTILE_NUMBERS + ORDINARY_NUMBERS)
def test_json_text_is_always_castable_to_jsonb(database_url: str, number: str) -> None:
    value = Decimal(number)
    stored = json_text({"field": value, "list": [value], "text": "a\x00b"})
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT %s::json::jsonb ->> 'field'", (stored,)).fetchone()
    assert row is not None
    assert Decimal(row[0]) == value  # the exact value, as a number or as its digits
    kept_as_number = f'"field":{value}' in stored
    assert kept_as_number == storable_number(value)
    assert kept_as_number == (number in ORDINARY_NUMBERS)
    assert len(stored) < 3 * MAX_DIGITS + 100 or len(number) > MAX_DIGITS


_FIELDS = roster.COLUMN_NAMES.index("fields")


@pytest.mark.parametrize("number", HOSTILE_NUMBERS[:2] + ORDINARY_NUMBERS)
@pytest.mark.parametrize("name", ["Nowak", "Nowak\x00"], ids=["name", "name-with-nul"])
@pytest.mark.parametrize("aligned", [True, False], ids=["orders-as-fields", "orders-apart"])
def test_a_fold_state_reads_back_as_the_same_entry(number: str, name: str, aligned: bool) -> None:
    # The state is compact (no default parts, field orders by position, the fields left to the
    # row's `fields` column where it holds them exactly): nothing may be lost, neither a
    # number's exact value nor the order of the fields and of their orders.
    value = Decimal(number)
    fields = {"lastName": name, "custom": value, "nested": {"list": [value, None]}}
    orders = {"lastName": "0|b", "custom": "1|a", "nested": "0|b"}
    entry = RosterEntry(
        slug="e",
        attendee_id="a",
        first_seen_at=datetime(2026, 5, 14, 8, tzinfo=UTC),
        fields=fields,
        field_orders=orders if aligned else dict(reversed(orders.items())),
        profile_order="b",
        amount=Decimal("349.00"),
        last_position=7,
    )
    row = roster.row(entry)
    state = row[-1]
    again = roster.decode_state(state, row[_FIELDS])
    assert again == entry
    assert list(again.fields) == list(entry.fields)
    assert list(again.field_orders) == list(entry.field_orders)
    stored = json.loads(state)
    assert "deleted_order" not in stored[0]  # a part at its default is left out
    assert isinstance(stored[2], list) == aligned  # orders by position where they line up
    # The fields go in the state where the column had to change them, or beside orders by name.
    changed = "\x00" in name or number in HOSTILE_NUMBERS
    assert ("fields" in stored[0]) == (changed or not aligned)


def test_a_fold_state_written_before_it_was_compact_still_reads() -> None:
    # As written until 2026-12-01: every part, the fields, and the field orders by name.
    state = (
        b'[{"slug":"e","attendee_id":"a","first_seen_at":"2026-05-14T08:00:00Z",'
        b'"fields":{"b":1.50,"a":"x"},"field_orders":{},"profile_order":"t","registered_at":'
        b'"2026-05-14T08:00:00Z","deleted_order":null,"deleted_at":null,"move_order":null,'
        b'"move":null,"last_check_in_at":null,"last_check_out_at":null,"payment_order":null,'
        b'"paid_at":null,"amount":null,"currency":null,"method":null,"last_position":3},'
        b'["0|t","1|t"],{"a":0,"b":1}]'
    )
    entry = roster.decode_state(state, '{"b":1.50,"a":"x"}')
    assert entry.fields == {"b": Decimal("1.50"), "a": "x"}
    assert entry.field_orders == {"a": "0|t", "b": "1|t"}
    assert (entry.profile_order, entry.last_position, entry.amount) == ("t", 3, None)
    row = roster.row(entry)
    assert roster.decode_state(row[-1], row[_FIELDS]) == entry


async def test_a_hostile_number_in_a_field_breaks_no_read(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service()
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        for n, number in enumerate(HOSTILE_NUMBERS + ORDINARY_NUMBERS):
            answer = await client.post(
                "/webhooks/jte", content=_registration(f"a-{n}", number), headers=token_headers()
            )
            assert answer.json()["status"] == "accepted", answer.text
        wait_until_caught_up(database_url)
        client.headers.update(bearer(api_token(database_url)))
        count = len(HOSTILE_NUMBERS) + len(ORDINARY_NUMBERS)

        page = await client.get("/v1/events/default/roster?limit=100")
        assert page.status_code == 200, page.text
        fields = {item["attendee_id"]: item["fields"] for item in page.json()["items"]}
        assert len(fields) == count
        assert fields["a-0"]["customField"] == "1E+200000"  # its exact value, as text
        assert fields["a-0"]["nested"]["list"] == ["1E+200000"]
        ordinary = f"a-{len(HOSTILE_NUMBERS) + 1}"
        assert fields[ordinary]["customField"] == -12.50  # an ordinary number stays one

        exported = await client.get("/v1/events/default/roster?format=csv")
        assert exported.status_code == 200, exported.text
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert len(rows) == count
        assert json.loads(rows[0]["fields"])  # every cell is JSON that parses

        detail = await client.get("/v1/events/default/attendees/a-0")
        assert detail.status_code == 200, detail.text
        assert detail.json()["attendee"]["fields"]["customField"] == "1E+200000"

    with psycopg.connect(database_url) as conn:
        assert len(conn.execute("SELECT * FROM analytics.roster").fetchall()) == count
    rebuild(
        database_url, ["roster"], SOURCE
    )  # a rebuild reads every delivery again, and so do readers
    with psycopg.connect(database_url) as conn:
        rebuilt = conn.execute(
            "SELECT fields ->> 'customField' FROM analytics.roster WHERE attendee_id = 'a-0'"
        ).fetchone()
    assert rebuilt == ("1E+200000",)


async def test_a_row_written_before_the_rule_is_a_documented_503_not_a_500(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service()
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        answer = await client.post(
            "/webhooks/jte", content=_registration("a-1", "1"), headers=token_headers()
        )
        assert answer.json()["status"] == "accepted"
        wait_until_caught_up(database_url)
        # As an older release stored it: the json column takes it, a jsonb cast cannot.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE rollcall_views.roster_v1 SET fields = '{\"n\": 1e200000}'")
        client.headers.update(bearer(api_token(database_url)))
        for path in ("roster", "roster?format=csv", "attendees/a-1"):
            answer = await client.get(f"/v1/events/default/{path}")
            assert answer.status_code == 503, (path, answer.text)
            assert answer.json()["error"] == "unreadable"
    rebuild(database_url, ["roster"], SOURCE)  # what the message tells the operator to do
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        client.headers.update(bearer(api_token(database_url)))
        assert (await client.get("/v1/events/default/roster")).status_code == 200


async def test_views_not_set_up_yet_are_a_503_not_a_500(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service(projections=False)  # no runner here: nothing made the views yet
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        client.headers.update(bearer(api_token(database_url)))
        answer = await client.get("/v1/events/default/occupancy")
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "unavailable" and answer.headers["retry-after"] == "5"
