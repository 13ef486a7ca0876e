"""Spreadsheets against the real server: CSV dialects (the bytes), XLSX, the form's fields as
columns of their own, and CSV from every list and summary endpoint."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest
from openpyxl import load_workbook

from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import RunningService, api_token, bearer, token_headers

BOM = b"\xef\xbb\xbf"
DAY = "2026-05-14T"


def delivery(event: str, attendee: dict[str, Any], at: str, delivery_id: str) -> bytes:
    body = {"event": event, "id": delivery_id, "occurredAt": DAY + at + "Z", "attendee": attendee}
    return json.dumps(body).encode()


PEOPLE = [
    {"id": "a-1", "firstName": "Zofia", "lastName": "Dąbrowska", "email": "z@example.pl",
     "tshirt": "M", "diet": "wegańska"},
    {"id": "a-2", "firstName": "Łukasz", "lastName": "Żółkiewski", "email": "l@example.pl",
     "tshirt": "XL", "diet": "=HYPERLINK(\"http://x\")", "Firma; oddział": "Kraków, \"Nowa\""},
    {"id": "a-3", "firstName": "Ścibor", "lastName": "Ćwik", "email": "s@example.pl"},
]  # fmt: skip


@pytest.fixture
async def client(
    start_service: Callable[..., RunningService], database_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    service = start_service()
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        bodies = [
            delivery("AttendeeRegistered", person, f"08:0{n}:00", f"r{n}")
            for n, person in enumerate(PEOPLE)
        ]
        payment = {"amount": "349.00", "currency": "PLN", "method": "payu", "reference": "R1"}
        bodies.append(delivery("AttendeePaymentConfirmed", {"id": "a-1", "payment": payment},
                               "09:00:00", "p1"))  # fmt: skip
        bodies.append(delivery("AttendeeCheckedIn", {"id": "a-2"}, "10:00:00", "c1"))
        for body in bodies:
            answer = await client.post("/webhooks/jte", content=body, headers=token_headers())
            assert answer.status_code == 200, answer.text
        wait_until_caught_up(database_url)
        client.headers.update(bearer(api_token(database_url)))
        yield client


async def test_excel_dialect_bytes_and_round_trip(client: httpx.AsyncClient) -> None:
    answer = await client.get("/v1/events/default/roster?format=csv&dialect=excel")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    raw = answer.content
    assert raw.startswith(BOM + b"attendee_id;status;email;first_name;last_name;")
    header_line = raw[len(BOM) : raw.index(b"\r\n")]
    assert header_line.endswith(
        b';fields;"field:Firma; oddzia\xc5\x82";field:diet;field:payment;field:tshirt'
    )
    assert raw.count(b"\r\n") == 4 and raw.replace(b"\r\n", b"").count(b"\n") == 0
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline=""), delimiter=";"))
    by_name = {row["last_name"]: row for row in rows}
    assert set(by_name) == {"Ćwik", "Dąbrowska", "Żółkiewski"}
    assert by_name["Dąbrowska"]["first_name"] == "Zofia"
    assert by_name["Dąbrowska"]["field:diet"] == "wegańska"
    assert by_name["Żółkiewski"]["field:tshirt"] == "XL"
    assert by_name["Żółkiewski"]["field:Firma; oddział"] == 'Kraków, "Nowa"'
    # The same neutralisation as every other cell: no formula reaches the spreadsheet.
    assert by_name["Żółkiewski"]["field:diet"] == '\'=HYPERLINK("http://x")'
    assert by_name["Ćwik"]["field:diet"] == ""
    assert by_name["Dąbrowska"]["amount"] == "349.00" and by_name["Dąbrowska"]["paid"] == "true"


async def test_plain_csv_has_the_same_field_columns(client: httpx.AsyncClient) -> None:
    raw = (await client.get("/v1/events/default/roster?format=csv")).content
    assert not raw.startswith(BOM) and b"\r\n" not in raw
    rows = list(csv.reader(io.StringIO(raw.decode(), newline="")))
    assert rows[0][-5:] == [
        "fields", "field:Firma; oddział", "field:diet", "field:payment", "field:tshirt"
    ]  # fmt: skip
    excel = (await client.get("/v1/events/default/roster?format=csv&dialect=excel")).content
    excel_rows = list(csv.reader(io.StringIO(excel.decode("utf-8-sig"), newline=""), delimiter=";"))
    assert excel_rows == rows  # the same cells in either dialect


async def test_field_columns_are_stable_and_grow_in_name_order(
    client: httpx.AsyncClient, database_url: str
) -> None:
    first = (await client.get("/v1/events/default/roster?format=csv")).content.split(b"\n")[0]
    assert (
        first == (await client.get("/v1/events/default/roster?format=csv")).content.split(b"\n")[0]
    )
    late = {"id": "a-4", "firstName": "Ala", "lastName": "Bąk", "allergy": "orzechy"}
    body = delivery("AttendeeRegistered", late, "11:00:00", "r9")
    answer = await client.post("/webhooks/jte", content=body, headers=token_headers())
    assert answer.status_code == 200
    wait_until_caught_up(database_url)
    header = next(csv.reader(io.StringIO(
        (await client.get("/v1/events/default/roster?format=csv")).text
    )))  # fmt: skip
    fields = [name for name in header if name.startswith("field:")]
    assert fields == [
        "field:Firma; oddział", "field:allergy", "field:diet", "field:payment", "field:tshirt"
    ]  # fmt: skip


async def test_xlsx_roster_and_payments(client: httpx.AsyncClient) -> None:
    answer = await client.get("/v1/events/default/roster?format=xlsx")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/vnd.openxmlformats")
    assert 'filename="roster-default.xlsx"' in answer.headers["content-disposition"]
    sheet = load_workbook(io.BytesIO(answer.content)).active
    rows = [[cell.value for cell in row] for row in sheet.iter_rows()]
    header = rows[0]
    assert header[-4:] == ["field:Firma; oddział", "field:diet", "field:payment", "field:tshirt"]
    by_name = {
        row[header.index("last_name")]: dict(zip(header, row, strict=True)) for row in rows[1:]
    }
    assert by_name["Dąbrowska"]["field:diet"] == "wegańska"
    diet = by_name["Żółkiewski"]["field:diet"]
    assert diet == '\'=HYPERLINK("http://x")'
    cells = {c.value: c for row in sheet.iter_rows() for c in row}
    assert cells[diet].data_type == "s"  # text, not a formula
    payments = await client.get("/v1/events/default/payments?format=xlsx")
    sheet = load_workbook(io.BytesIO(payments.content)).active
    values = [[cell.value for cell in row] for row in sheet.iter_rows()]
    assert values[0] == [
        "entry_key",
        "attendee_id",
        "amount",
        "currency",
        "method",
        "reference",
        "paid_at",
    ]
    # Times are date cells (UTC, as in every answer), not text: a spreadsheet sorts and
    # computes with them.
    paid_at = datetime(2026, 5, 14, 9, 0)
    assert values[1][2] == 349 and values[1][3:] == ["PLN", "payu", "R1", paid_at]
    cell = next(sheet.iter_rows(min_row=2, max_row=2))[6]
    assert cell.is_date and cell.number_format == "yyyy-mm-dd hh:mm:ss"
    roster_times = [row[header.index("registered_at")] for row in rows[1:]]
    assert roster_times and all(isinstance(t, datetime) for t in roster_times)


async def test_every_list_and_summary_answers_csv(client: httpx.AsyncClient) -> None:
    expected = {
        "/v1/events": "event,registered,inside_now",
        "/v1/events/default/occupancy": "event,at,inside,peak,peak_at",
        "/v1/events/default/occupancy/timeline": "start,end,entered,exited,inside",
        "/v1/events/default/check-ins": "attendee_id,first_name,last_name,at,inside",
        "/v1/events/default/payments": "entry_key,attendee_id,amount,currency",
        "/v1/events/default/payments/summary": "totals,day,currency,method,payments,amount",
    }
    for path, header in expected.items():
        answer = await client.get(path + "?format=csv")
        assert answer.status_code == 200, (path, answer.text)
        assert answer.text.startswith(header), (path, answer.text[:80])
        excel = await client.get(path + "?format=csv&dialect=excel")
        assert excel.content.startswith(BOM + header.replace(",", ";").encode()), path
    summary = (await client.get("/v1/events/default/payments/summary?format=csv")).text
    assert "day,2026-05-14,PLN,,1,349.00" in summary.splitlines()
    check_ins = list(csv.reader(io.StringIO((await client.get(
        "/v1/events/default/check-ins?format=csv")).text)))  # fmt: skip
    assert check_ins[1] == ["a-2", "Łukasz", "Żółkiewski", DAY + "10:00:00Z", "true"]
    for bad in ("roster?dialect=excel", "roster?format=csv&dialect=tsv", "occupancy?format=xlsx"):
        answer = await client.get(f"/v1/events/default/{bad}")
        assert answer.status_code == 400, bad
        assert answer.json()["error"] == "bad_parameter"


async def test_analytics_view_of_fields(client: httpx.AsyncClient, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT attendee_id, value FROM analytics.roster_fields WHERE event = 'default' "
            "AND field = 'tshirt' ORDER BY attendee_id"
        ).fetchall()
    assert rows == [("a-1", "M"), ("a-2", "XL")]
