"""`rollcall import` against the real server: a 20,000-row attendee list, then the same
attendees' webhooks, stores no attendee twice and gives the views the webhooks alone give;
re-running adds nothing; a dry run writes nothing; JSON lines dedupe against JTE's deliveries."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from service.cli.main import main
from service.config import EventConfig
from service.eventstore.store import DeliveryStore
from service.http.intake import delivery_record
from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import (
    RunningService,
    api_token,
    bearer,
    make_settings,
    stored_rows,
    token_headers,
)

SIZE = 20_000
HTTP_SHARE = 1_000
FIRST = ["Zofia", "Łukasz", "Ścibor", "Anna", "Jan", "Żaneta"]
LAST = ["Dąbrowska", "Żółkiewski", "Ćwik", "Nowak", "Wiśniewska", "Kowalski"]


def person(i: int) -> dict[str, Any]:
    return {
        "id": f"a-{i:05d}",
        "firstName": FIRST[i % len(FIRST)],
        "lastName": LAST[i // 7 % len(LAST)],
        "email": f"p{i}@example.pl",
    }


def webhooks() -> list[bytes]:
    """Every attendee registered in the morning; some renamed and checked in after noon."""
    out = []
    for i in range(SIZE):
        at = f"2026-05-14T08:{i // 1000 % 60:02d}:{i % 60:02d}Z"
        body = {"event": "AttendeeRegistered", "id": f"r{i}", "occurredAt": at,
                "attendee": person(i)}  # fmt: skip
        out.append(json.dumps(body, ensure_ascii=False).encode())
        if i % 10 == 0:
            late = {"event": "AttendeeUpdated", "id": f"u{i}", "occurredAt": "2026-05-14T13:00:00Z",
                    "attendee": {"id": person(i)["id"], "lastName": "Zmieniona"}}  # fmt: skip
            out.append(json.dumps(late, ensure_ascii=False).encode())
        if i % 7 == 0:
            who = {"id": person(i)["id"]}
            seen = {"event": "AttendeeCheckedIn", "id": f"c{i}",
                    "occurredAt": "2026-05-14T14:00:00Z", "attendee": who}  # fmt: skip
            out.append(json.dumps(seen).encode())
    return out


async def post_all(url: str, bodies: list[bytes]) -> list[str]:
    statuses: list[str] = []
    queue = list(reversed(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                answer = await client.post("/webhooks/jte", content=body, headers=token_headers())
                assert answer.status_code == 200, answer.text
                statuses.append(answer.json()["status"])

        await asyncio.gather(*(worker() for _ in range(8)))
    return statuses


async def deliver(url: str, database_url: str, bodies: list[bytes]) -> None:
    """The webhooks: a thousand through the real HTTP intake, the rest stored as intake stores
    them (delivery_record, one batch per thousand): twenty thousand requests one by one would
    take minutes on a shared CI machine."""
    statuses = await post_all(url, bodies[:HTTP_SHARE])
    assert set(statuses) == {"accepted"}
    event = EventConfig(slug="default", secrets=("s",))
    store = DeliveryStore(database_url)
    try:
        for start in range(HTTP_SHARE, len(bodies), 1000):
            batch = [delivery_record(event, {}, b, "token") for b in bodies[start : start + 1000]]
            assert all(p is not None for p in store.append(batch))
    finally:
        store.close()


def write_list(path: Path) -> None:
    """JTE's list as an organiser exports it: Polish headers, `;`, a BOM (Excel's CSV)."""
    with path.open("w", encoding="utf-8-sig", newline="") as stream:
        writer = csv.writer(stream, delimiter=";")
        writer.writerow(["Id", "Imię", "Nazwisko", "E-mail"])
        for i in range(SIZE):
            p = person(i)
            writer.writerow([p["id"], p["firstName"], p["lastName"], p["email"]])


def env(database_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("ROLLCALL_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ROLLCALL_SECRET", "s")
    monkeypatch.delenv("ROLLCALL_CONFIG", raising=False)


async def views(url: str, database_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        client.headers.update(bearer(api_token(database_url)))
        roster = await client.get("/v1/events/default/roster?status=all&format=csv")
        occupancy = (await client.get("/v1/events/default/occupancy")).json()
        return {"roster": roster.content, "occupancy": occupancy}


@pytest.mark.timeout(900)
async def test_list_then_webhooks_equals_webhooks_alone(
    start_service: Callable[..., RunningService],
    database_url: str,
    new_database: Callable[[], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    listing = tmp_path / "lista.csv"
    write_list(listing)
    env(database_url, tmp_path / "cli", monkeypatch)
    noon = "2026-05-14T12:00:00Z"
    args = ["import", str(listing), "--occurred-at", noon, "--operator", "ola"]
    assert main([*args, "--dry-run"]) == 0
    assert f"dry run: {SIZE} of {SIZE} rows would be added" in capsys.readouterr().out
    with psycopg.connect(database_url) as conn:  # a dry run writes nothing, not even a store
        found = conn.execute("SELECT to_regclass('rollcall.deliveries_events')").fetchone()
    assert found == (None,)
    assert main(args) == 0
    assert f"{SIZE} of {SIZE} rows added" in capsys.readouterr().out
    assert main(args) == 0  # again: nothing new
    assert f"0 of {SIZE} rows added ({SIZE} already stored)" in capsys.readouterr().out
    assert main([*args, "--dry-run"]) == 0
    assert f"dry run: 0 of {SIZE} rows would be added" in capsys.readouterr().out
    stored = stored_rows(database_url)
    assert len(stored) == SIZE
    first = stored[0]
    assert first["verified_by"] == "import"
    assert first["headers"] == {
        "x-rollcall-import-operator": "ola",
        "x-rollcall-import-file": "lista.csv",
        "x-rollcall-import-row": "2",
    }
    assert json.loads(first["body"])["attendee"] == {
        "id": "a-00000", "firstName": "Zofia", "lastName": "Dąbrowska", "email": "p0@example.pl"
    }  # fmt: skip

    bodies = webhooks()
    imported = start_service()
    await deliver(imported.url, database_url, bodies)
    wait_until_caught_up(database_url, timeout=300)

    alone_url = new_database()
    alone = RunningService(make_settings(alone_url, tmp_path / "alone"))
    alone.start()
    try:
        await deliver(alone.url, alone_url, bodies)
        wait_until_caught_up(alone_url, timeout=300)
        expected = await views(alone.url, alone_url)
    finally:
        alone.stop()
    got = await views(imported.url, database_url)
    assert got["occupancy"] == expected["occupancy"]
    assert got["roster"] == expected["roster"]
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT attendee_id) FROM analytics.roster"
        ).fetchone()
    assert row == (SIZE, SIZE)


async def test_json_lines_dedupe_against_jte(
    start_service: Callable[..., RunningService],
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bodies = webhooks()[:30]
    lines = tmp_path / "history.jsonl"
    lines.write_bytes(b"\n".join(bodies) + b"\n")
    env(database_url, tmp_path / "cli", monkeypatch)
    assert main(["import", str(lines), "--operator", "ola"]) == 0
    assert "30 of 30 rows added" in capsys.readouterr().out
    service = start_service()
    assert set(await post_all(service.url, bodies)) == {"duplicate"}
    assert {row["verified_by"] for row in stored_rows(database_url)} == {"import"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event": "AttendeeRegistered", "attendee": {"id": "x"}}\nnot json\n')
    assert main(["import", str(bad)]) == 1
    assert "line 2: not a JTE webhook body" in capsys.readouterr().err
    no_id = tmp_path / "no-id.csv"
    no_id.write_text("Imię,Nazwisko\nAla,Bąk\n")
    assert main(["import", str(no_id)]) == 1
    assert "no attendee id column" in capsys.readouterr().err
