"""Local time: a Warsaw event's day totals and timeline buckets around the DST changes of the
last Sundays of March (a 23-hour day) and October (a 25-hour day), against the real server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest

from projections import payments
from service.config import ConfigError, EventConfig, load_settings
from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import SECRET, RunningService, api_token, bearer, token_headers, until

WARSAW = EventConfig(slug="waw", secrets=(SECRET,), timezone="Europe/Warsaw")


def delivery(event: str, attendee: dict[str, Any], at: str, delivery_id: str) -> bytes:
    return json.dumps(
        {"event": event, "id": delivery_id, "occurredAt": at, "attendee": attendee}
    ).encode()


def paid(attendee_id: str, at: str, amount: str) -> bytes:
    payment = {"amount": amount, "currency": "PLN", "method": "payu", "reference": attendee_id}
    return delivery(
        "AttendeePaymentConfirmed", {"id": attendee_id, "payment": payment}, at, "p" + attendee_id
    )


def checked_in(attendee_id: str, at: str) -> bytes:
    return delivery("AttendeeCheckedIn", {"id": attendee_id}, at, "c" + attendee_id)


DELIVERIES = [
    paid("p1", "2026-03-28T23:30:00Z", "10.00"),  # 00:30 CET on 29 March
    paid("p2", "2026-03-29T21:59:00Z", "20.00"),  # 23:59 CEST on 29 March
    paid("p3", "2026-03-29T22:00:00Z", "30.00"),  # 00:00 CEST on 30 March
    paid("p4", "2026-10-24T22:00:00Z", "40.00"),  # 00:00 CEST on 25 October
    paid("p5", "2026-10-25T22:59:00Z", "50.00"),  # 23:59 CET on 25 October
    paid("p6", "2026-10-25T23:00:00Z", "60.00"),  # 00:00 CET on 26 October
    checked_in("c1", "2026-03-29T00:30:00Z"),  # 01:30 CET
    checked_in("c2", "2026-03-29T01:30:00Z"),  # 03:30 CEST (02:00-03:00 never happened)
    checked_in("c3", "2026-03-29T22:30:00Z"),  # 00:30 CEST on 30 March
    checked_in("c4", "2026-10-25T00:30:00Z"),  # 02:30 CEST, the first 02:30
    checked_in("c5", "2026-10-25T01:30:00Z"),  # 02:30 CET, the second 02:30
]


@pytest.fixture
async def warsaw(
    start_service: Callable[..., RunningService], database_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    service = start_service(events={"waw": WARSAW})
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        for body in DELIVERIES:
            answer = await client.post("/webhooks/jte/waw", content=body, headers=token_headers())
            assert answer.status_code == 200, answer.text
        wait_until_caught_up(database_url)
        client.headers.update(bearer(api_token(database_url)))
        yield client


async def test_payment_days_are_local_days(warsaw: httpx.AsyncClient) -> None:
    summary = (await warsaw.get("/v1/events/waw/payments/summary")).json()
    assert [(d["day"], d["payments"], d["amount"]) for d in summary["by_day"]] == [
        ("2026-03-29", 2, "30.00"),
        ("2026-03-30", 1, "30.00"),
        ("2026-10-25", 2, "90.00"),
        ("2026-10-26", 1, "60.00"),
    ]
    utc = (await warsaw.get("/v1/events/waw/payments/summary?tz=UTC")).json()
    assert [(d["day"], d["payments"]) for d in utc["by_day"]] == [
        ("2026-03-28", 1),
        ("2026-03-29", 2),
        ("2026-10-24", 1),
        ("2026-10-25", 2),
    ]
    bad = await warsaw.get("/v1/events/waw/payments/summary?tz=Mars/Olympus_Mons")
    assert bad.status_code == 400
    assert "IANA time zone" in bad.json()["message"]


async def test_march_day_has_23_hourly_buckets(warsaw: httpx.AsyncClient) -> None:
    hourly = (
        await warsaw.get(
            "/v1/events/waw/occupancy/timeline?bucket=1h&from=2026-03-29&to=2026-03-30"
        )
    ).json()
    assert hourly["tz"] == "Europe/Warsaw"
    assert (hourly["start"], hourly["end"]) == ("2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z")
    buckets = hourly["buckets"]
    assert len(buckets) == 23
    # Local 00:00, 01:00, then 03:00: the hour 02:00-03:00 does not exist that night.
    assert [b["start"] for b in buckets[:3]] == [
        "2026-03-28T23:00:00Z",
        "2026-03-29T00:00:00Z",
        "2026-03-29T01:00:00Z",
    ]
    assert [b["entered"] for b in buckets[:3]] == [0, 1, 1]
    assert sum(b["entered"] for b in buckets) == 2  # c3 came on the 30th, local time
    assert buckets[-1]["end"] == "2026-03-29T22:00:00Z" and buckets[-1]["inside"] == 2
    daily = (
        await warsaw.get(
            "/v1/events/waw/occupancy/timeline?bucket=1d&from=2026-03-28&to=2026-03-31"
        )
    ).json()["buckets"]
    assert [(b["start"], b["end"], b["entered"]) for b in daily] == [
        ("2026-03-27T23:00:00Z", "2026-03-28T23:00:00Z", 0),
        ("2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z", 2),  # 23 hours
        ("2026-03-29T22:00:00Z", "2026-03-30T22:00:00Z", 1),
    ]


async def test_october_day_has_25_hourly_buckets(warsaw: httpx.AsyncClient) -> None:
    hourly = (
        await warsaw.get(
            "/v1/events/waw/occupancy/timeline?bucket=1h&from=2026-10-25&to=2026-10-26"
        )
    ).json()["buckets"]
    assert len(hourly) == 25
    # Local 02:00 happens twice: once in summer time (c4), once in winter time (c5).
    assert [(b["start"], b["entered"]) for b in hourly[1:4]] == [
        ("2026-10-24T23:00:00Z", 0),
        ("2026-10-25T00:00:00Z", 1),
        ("2026-10-25T01:00:00Z", 1),
    ]
    assert hourly[-1]["end"] == "2026-10-25T23:00:00Z"
    daily = (
        await warsaw.get(
            "/v1/events/waw/occupancy/timeline?bucket=1d&from=2026-10-25&to=2026-10-26"
        )
    ).json()
    ((day,),) = [daily["buckets"]]
    assert (day["start"], day["end"], day["entered"]) == (
        "2026-10-24T22:00:00Z",
        "2026-10-25T23:00:00Z",  # 25 hours
        2,
    )
    # Quarter hours: 100 of them that day; the first check-in falls in local 02:30-02:45 CEST.
    quarters = (
        await warsaw.get(
            "/v1/events/waw/occupancy/timeline?bucket=15m&from=2026-10-25&to=2026-10-26"
        )
    ).json()["buckets"]
    assert len(quarters) == 100
    assert [b["start"] for b in quarters if b["entered"]] == [
        "2026-10-25T00:30:00Z",
        "2026-10-25T01:30:00Z",
    ]


async def test_default_span_and_other_zones(warsaw: httpx.AsyncClient) -> None:
    daily = (await warsaw.get("/v1/events/waw/occupancy/timeline?bucket=1d")).json()
    assert daily["start"] == "2026-03-28T23:00:00Z"  # local midnight before the first check-in
    assert daily["end"] == "2026-10-25T23:00:00Z"  # local midnight after the last
    assert sum(b["entered"] for b in daily["buckets"]) == 5
    # India is UTC+05:30: its hours begin at half past, UTC.
    kolkata = (
        await warsaw.get(
            "/v1/events/waw/occupancy/timeline?bucket=1h&tz=Asia/Kolkata"
            "&from=2026-03-29T06:00:00&to=2026-03-29T08:00:00"
        )
    ).json()
    assert [(b["start"], b["entered"]) for b in kolkata["buckets"]] == [
        ("2026-03-29T00:30:00Z", 1),
        ("2026-03-29T01:30:00Z", 1),
    ]
    minutes = (
        await warsaw.get(
            "/v1/events/waw/occupancy/timeline?bucket=1m"
            "&from=2026-03-29T00:29:00Z&to=2026-03-29T00:32:00Z"
        )
    ).json()["buckets"]
    assert [b["entered"] for b in minutes] == [0, 1, 0]
    half = (
        await warsaw.get(
            "/v1/events/waw/occupancy/timeline?bucket=30m&from=2026-03-29T01:00&to=2026-03-29T04:00"
        )
    ).json()["buckets"]
    # Local 01:00 to 04:00 that night is two hours: four half hours.
    assert [(b["start"], b["entered"]) for b in half] == [
        ("2026-03-29T00:00:00Z", 0),
        ("2026-03-29T00:30:00Z", 1),
        ("2026-03-29T01:00:00Z", 0),
        ("2026-03-29T01:30:00Z", 1),
    ]
    bad = await warsaw.get("/v1/events/waw/occupancy/timeline?tz=Europe/Nowhere")
    assert bad.status_code == 400 and "IANA time zone" in bad.json()["message"]


def test_configured_zone_is_checked(tmp_path: Path) -> None:
    env = {"ROLLCALL_DATA_DIR": str(tmp_path)}
    assert load_settings(env).events["default"].timezone == "UTC"
    local = load_settings({**env, "ROLLCALL_TIMEZONE": "Europe/Warsaw"})
    assert local.events["default"].timezone == "Europe/Warsaw"
    with pytest.raises(ConfigError, match="'Europe/Varsovia' is not an IANA time zone"):
        load_settings({**env, "ROLLCALL_TIMEZONE": "Europe/Varsovia"})
    config = tmp_path / "rollcall.toml"
    config.write_text('[events.waw]\nsecret = "s"\ntimezone = "../../etc/passwd"\n')
    with pytest.raises(ConfigError, match="JTE event 'waw': timezone"):
        load_settings({**env, "ROLLCALL_CONFIG": str(config)})


def sql_day_totals(database_url: str, slug: str) -> list[tuple[str, int, str, str]]:
    """analytics.payment_totals as an analyst reads it: (day, payments, amount, time zone)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT day::text, sum(payments)::int, sum(amount)::text, min(timezone) "
            "FROM analytics.payment_totals WHERE event = %s GROUP BY day ORDER BY day",
            (slug,),
        ).fetchall()
    return [(row[0], row[1], row[2], row[3]) for row in rows]


async def test_payment_totals_in_sql_cut_days_in_the_events_zone(
    warsaw: httpx.AsyncClient, database_url: str
) -> None:
    # Recorded by the service at start: the SQL view agrees with /payments/summary.
    assert sql_day_totals(database_url, "waw") == [
        ("2026-03-29", 2, "30.00", "Europe/Warsaw"),
        ("2026-03-30", 1, "30.00", "Europe/Warsaw"),
        ("2026-10-25", 2, "90.00", "Europe/Warsaw"),
        ("2026-10-26", 1, "60.00", "Europe/Warsaw"),
    ]
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        # A zone PostgreSQL does not know is not recorded: that event's days are UTC days.
        assert await payments.record_zones(pool, {"waw": "Mars/Olympus_Mons"}) == [
            "Mars/Olympus_Mons"
        ]
        assert [row[0] for row in sql_day_totals(database_url, "waw")] == [
            "2026-03-28", "2026-03-29", "2026-10-24", "2026-10-25"
        ]  # fmt: skip
        assert {row[3] for row in sql_day_totals(database_url, "waw")} == {"UTC"}
    finally:
        await pool.close()


async def test_a_reloaded_configuration_moves_payment_totals_days(
    start_service: Callable[..., RunningService],
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "rollcall.toml"
    config.write_text(f'[events.waw]\nsecrets = ["{SECRET}"]\n')  # UTC
    monkeypatch.setenv("ROLLCALL_CONFIG", str(config))
    monkeypatch.setenv("ROLLCALL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", database_url)
    service = start_service(events=load_settings().events, config=config)
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        late = paid("p1", "2026-03-28T23:30:00Z", "10.00")  # 00:30 on 29 March in Warsaw
        answer = await client.post("/webhooks/jte/waw", content=late, headers=token_headers())
        assert answer.status_code == 200, answer.text
        wait_until_caught_up(database_url)
        assert sql_day_totals(database_url, "waw") == [("2026-03-28", 1, "10.00", "UTC")]
        config.write_text(
            f'[events.waw]\nsecrets = ["{SECRET}"]\ntimezone = "Europe/Warsaw"\n# reloaded\n'
        )

        async def moved() -> bool:
            # A request makes the watcher look at the file (at most once a second).
            again = await client.post("/webhooks/jte/waw", content=late, headers=token_headers())
            assert again.status_code == 200
            return sql_day_totals(database_url, "waw") == [
                ("2026-03-29", 1, "10.00", "Europe/Warsaw")
            ]

        await until(moved, 30)
