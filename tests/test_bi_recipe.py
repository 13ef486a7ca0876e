"""The BI recipe (docs/bi-queries.sql, README "Metabase and Grafana") holds: every query runs as
a read-only analyst login on a database with deliveries, and answers rows; and `rollcall
export --sqlite` writes the same views into a SQLite file."""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from service.cli.main import main
from service.eventstore.roles import grant_analyst
from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import RunningService, analyst_groups, as_role, drop_roles, token_headers

RECIPE = Path(__file__).resolve().parent.parent / "docs" / "bi-queries.sql"


def queries() -> list[str]:
    text = "\n".join(line for line in RECIPE.read_text().splitlines() if not line.startswith("--"))
    return [q.strip() for q in text.split(";") if q.strip()]


def grafana(query: str) -> str:
    """The query as Grafana sends it: variables and macros expanded."""
    query = query.replace("$event", "default")
    return re.sub(
        r"\$__timeFilter\((\w+)\)",
        r"\1 BETWEEN '2026-05-14T00:00:00Z' AND '2026-05-15T00:00:00Z'",
        query,
    )


async def seed(url: str) -> None:
    bodies = []
    for i in range(6):
        attendee = {"id": f"a-{i}", "firstName": "Ola", "tshirt": "M" if i % 2 else "L"}
        bodies.append({"event": "AttendeeRegistered", "attendee": attendee})
        bodies.append({"event": "AttendeeCheckedIn", "attendee": {"id": f"a-{i}"}})
        payment = {"amount": "10.50", "currency": "PLN", "method": "payu", "reference": f"R{i}"}
        bodies.append({"event": "AttendeePaymentConfirmed",
                       "attendee": {"id": f"a-{i}", "payment": payment}})  # fmt: skip
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for n, body in enumerate(bodies):
            stamped = {**body, "id": f"d{n}", "occurredAt": f"2026-05-14T09:{n:02d}:00Z"}
            answer = await client.post(
                "/webhooks/jte", content=json.dumps(stamped).encode(), headers=token_headers()
            )
            assert answer.status_code == 200, answer.text


async def test_recipe_queries_run_as_an_analyst(
    start_service: Callable[..., RunningService], database_url: str, server_url: str
) -> None:
    service = start_service()
    await seed(service.url)
    wait_until_caught_up(database_url)
    login = f"bi_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        password = grant_analyst(conn, login)
    try:
        with psycopg.connect(as_role(database_url, login, password)) as analyst:
            assert len(queries()) == 6
            for query in queries():
                rows = analyst.execute(grafana(query)).fetchall()
                assert rows, query
            sizes = analyst.execute(grafana(queries()[4])).fetchall()
            assert sorted(sizes) == [("L", 3), ("M", 3)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                analyst.execute("SELECT * FROM rollcall.deliveries_events")
    finally:
        drop_roles(server_url, [database_url], [login, *analyst_groups(server_url, login)])


async def test_export_to_sqlite(
    start_service: Callable[..., RunningService],
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = start_service()
    await seed(service.url)
    wait_until_caught_up(database_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("ROLLCALL_DATA_DIR", str(tmp_path / "cli"))
    target = tmp_path / "day.sqlite"
    assert main(["export", "--sqlite", str(target), "--event", "default"]) == 0
    with sqlite3.connect(target) as db:
        assert db.execute("SELECT count(*) FROM roster").fetchone() == (6,)
        assert db.execute("SELECT sum(amount), typeof(sum(amount)) FROM payments").fetchone() == (
            63.0,
            "real",
        )
        assert db.execute(
            "SELECT json_extract(fields, '$.tshirt') FROM roster WHERE attendee_id = 'a-1'"
        ).fetchone() == ("M",)
        assert db.execute("SELECT paid_at FROM payments ORDER BY paid_at LIMIT 1").fetchone() == (
            "2026-05-14T09:02:00Z",
        )
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"roster", "roster_fields", "payments", "occupancy_timeline"} <= tables
    assert main(["export", "--sqlite", str(target), "--event", "nowhere"]) == 1
