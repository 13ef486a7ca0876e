"""Personal data: sealed at the store, erased for good, found and exported by email; against
the real server, PostgreSQL and pg_dump."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from domain import deliveries as stored_form
from domain.deliveries import legacy_delivery_key
from domain.interpret import PARSER_VERSION
from projections.rebuild import build_as_of, rebuild
from projections.registry import VIEW_NAMES
from projections.schema import INTERNAL
from service import privacy
from service.eventstore import keys
from service.eventstore import store as store_module
from service.eventstore.replay import replay_quarantined
from service.eventstore.source import SOURCE
from service.eventstore.store import DeliveryRecorded, DeliveryStore, ensure_store
from tests.drill.erasure import pg_dump, readable
from tests.drill.harness import stored_deliveries
from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import RunningService, api_token, bearer, stored_rows, token_headers

# The person to erase: every value is unusual enough that finding it anywhere means it leaked.
ERASED = {
    "id": "a-erase",
    "firstName": "Zbigniewa",
    "lastName": "Przybyszewska",
    "email": "zbigniewa.przybyszewska@example.org",
    "company": "Tajna-Firma-Q",
    "dietary": "bezglutenowa-xq7",
}
KEPT = {
    "id": "a-keep",
    "firstName": "Bartłomiej",
    "lastName": "Kępiński",
    "email": "bartlomiej.kepinski@example.org",
    "company": "Jawna-Firma-W",
}
NEEDLES = ["Zbigniewa", "Przybyszewska", "zbigniewa.przybyszewska@example.org", "Tajna-Firma-Q",
           "bezglutenowa-xq7"]  # fmt: skip


def body(event: str, attendee: dict[str, Any], at: str, delivery_id: str | None) -> bytes:
    envelope: dict[str, Any] = {"event": event, "occurredAt": f"2026-05-14T{at}Z"}
    if delivery_id is not None:
        envelope["id"] = delivery_id
    envelope["attendee"] = attendee
    return json.dumps(envelope).encode()


def payment(attendee_id: str, amount: str, reference: str) -> dict[str, Any]:
    return {
        "id": attendee_id,
        "payment": {"amount": amount, "currency": "PLN", "method": "payu", "reference": reference},
    }


SEED = [
    body("AttendeeRegistered", ERASED, "08:00:00", "e1"),
    body("AttendeeRegistered", KEPT, "08:01:00", "k1"),
    body("AttendeeUpdated", {**ERASED, "phone": "+48 600 700 800"}, "08:02:00", None),
    body("AttendeePaymentConfirmed", payment("a-erase", "349.00", "R-E1"), "08:10:00", "e2"),
    body("AttendeePaymentConfirmed", payment("a-keep", "100.50", "R-K1"), "08:11:00", "k2"),
    body("AttendeeCheckedIn", {"id": "a-erase"}, "09:00:00", "e3"),
    body("AttendeeCheckedIn", {"id": "a-keep"}, "09:01:00", "k3"),
]
# Verified but unreadable (an event type the parser does not know), naming the person.
QUARANTINED = body("AttendeeFavourited", ERASED, "10:00:00", "q1")


def view_rows(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every live view's physical rows (the roster's stored state included), sorted."""
    tables = {  # table: its view
        "roster": "roster",
        "payments": "payments",
        "presence": "occupancy",
        "occupancy": "occupancy",
        "occupancy_changes": "occupancy",
        "roster_history": "roster_history",
    }
    out = {}
    with psycopg.connect(database_url) as conn:
        live: dict[str, int] = dict(
            conn.execute("SELECT view, version FROM rollcall.view_versions WHERE state = 'live'")
        )
        for name, view in tables.items():
            rows = conn.execute(f"SELECT * FROM rollcall_views.{name}_v{live[view]}").fetchall()
            out[name] = sorted(rows, key=repr)
    return out


@pytest.fixture
async def seeded(
    start_service: Callable[..., RunningService], database_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    service = start_service()
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        for delivery in SEED:
            answer = await client.post("/webhooks/jte", content=delivery, headers=token_headers())
            assert answer.status_code == 200, answer.text
        answer = await client.post("/webhooks/jte", content=QUARANTINED, headers=token_headers())
        assert answer.status_code == 202
        wait_until_caught_up(database_url)
        client.headers.update(bearer(api_token(database_url, "admin")))
        yield client, database_url


async def test_the_store_keeps_no_readable_personal_data(
    seeded: tuple[httpx.AsyncClient, str],
) -> None:
    _, database_url = seeded
    store_dump = readable(pg_dump(database_url, "--schema=rollcall"))
    for needle in [*NEEDLES, KEPT["email"], "+48 600 700 800"]:
        assert needle not in store_dump, needle
    # What routing needs stays readable (and proves the dump reader decodes nested bodies).
    assert '"attendee":{"id":"a-erase"' in store_dump
    assert "R-E1" in store_dump  # a payment's reference stays, for the ledger
    # Through the store's own port every body reads back exactly, the quarantined one too.
    assert [row["body"] for row in stored_rows(database_url)] == [*SEED, QUARANTINED]


async def test_erasure_scrubs_everything_and_nothing_else(
    seeded: tuple[httpx.AsyncClient, str],
) -> None:
    client, database_url = seeded
    before = view_rows(database_url)
    # An as-of snapshot made before the erasure holds the person too (until the erasure).
    build_as_of(database_url, ["roster"], SOURCE, datetime.now(UTC))
    assert any(n in readable(pg_dump(database_url)) for n in NEEDLES)  # the views had them

    answer = await client.delete("/v1/events/default/attendees/a-erase")
    assert answer.status_code == 200, answer.text
    receipt = answer.json()
    assert receipt["status"] == "erased"
    assert (receipt["event"], receipt["attendee_id"]) == ("default", "a-erase")
    assert receipt["erased_by"] == "token:test-admin"
    assert receipt["views_caught_up"] is True
    assert receipt["roster_versions_scrubbed"] == 2  # live and the as-of snapshot
    assert not any(n in answer.text for n in NEEDLES)

    dump = readable(pg_dump(database_url))
    for needle in NEEDLES:
        assert needle not in dump, needle
    assert KEPT["lastName"] in dump  # the reader would have found them
    # Even with the master key, nothing stored about them opens: the quarantined delivery
    # naming them was shredded with the rest.
    rows = stored_rows(database_url)
    assert not any(n.encode() in row["body"] for row in rows for n in NEEDLES)

    after = view_rows(database_url)
    # Every other attendee's rows are unchanged; occupancy and payments entirely so.
    for name in ("payments", "presence", "occupancy", "occupancy_changes"):
        assert after[name] == before[name], name
    kept_before = [r for r in before["roster"] if r[1] == "a-keep"]
    assert [r for r in after["roster"] if r[1] == "a-keep"] == kept_before
    person = (await client.get("/v1/events/default/attendees/a-erase")).json()
    attendee = person["attendee"]
    assert attendee["email"] is None and attendee["first_name"] is None
    assert attendee["fields"] == {}
    assert (attendee["paid"], attendee["amount"], attendee["checked_in"]) == (True, "349.00", True)
    assert not any(n in json.dumps(person) for n in NEEDLES)
    # As of any earlier moment too: every period of the roster's history was scrubbed.
    for moment in ("08:00:30", "08:05:00", "12:00:00"):
        past = await client.get(f"/v1/events/default/roster?status=all&as_of=2026-05-14T{moment}Z")
        assert past.status_code == 200 and "a-erase" in past.text, moment
        assert not any(n in past.text for n in NEEDLES), moment
    ledger = (await client.get("/v1/events/default/payments")).json()["items"]
    assert {(p["attendee_id"], p["amount"], p["reference"]) for p in ledger} == {
        ("a-erase", "349.00", "R-E1"),
        ("a-keep", "100.50", "R-K1"),
    }

    # A rebuild after the erasure equals the scrubbed live views, byte for byte.
    rebuild(database_url, list(VIEW_NAMES), SOURCE)
    assert view_rows(database_url) == after
    # A replay brings nothing back.
    store = DeliveryStore(database_url, pool_size=1)
    try:
        report = replay_quarantined(store)
    finally:
        store.close()
    assert report.appended == 0
    wait_until_caught_up(database_url)
    assert view_rows(database_url) == after
    assert not any(n in readable(pg_dump(database_url)) for n in NEEDLES)


async def test_deliveries_after_an_erasure_keep_no_personal_content(
    seeded: tuple[httpx.AsyncClient, str],
) -> None:
    client, database_url = seeded
    assert (await client.delete("/v1/events/default/attendees/a-erase")).status_code == 200
    # JTE keeps sending: an update with the name, a check-out, a payment.
    late = [
        body("AttendeeUpdated", ERASED, "11:00:00", "late-1"),
        body("AttendeeCheckedOut", {"id": "a-erase"}, "11:05:00", "late-2"),
        body("AttendeePaymentConfirmed", payment("a-erase", "20.00", "R-E2"), "11:06:00", None),
    ]
    for delivery in late:
        answer = await client.post("/webhooks/jte", content=delivery, headers=token_headers())
        assert answer.status_code == 200
        # A retry is still a duplicate.
        again = await client.post("/webhooks/jte", content=delivery, headers=token_headers())
        assert again.json() == {"status": "duplicate"}
    wait_until_caught_up(database_url)
    rows = stored_rows(database_url)[-3:]
    assert all(row["sealed"] is None for row in rows)  # kept as skeletons only
    assert not any(n in readable(pg_dump(database_url)) for n in NEEDLES)
    person = (await client.get("/v1/events/default/attendees/a-erase")).json()["attendee"]
    assert person["first_name"] is None and person["checked_in"] is False
    assert person["amount"] == "20.00"
    live = view_rows(database_url)
    rebuild(database_url, list(VIEW_NAMES), SOURCE)
    assert view_rows(database_url) == live


async def test_erasure_needs_an_admin_token_and_a_known_event(
    seeded: tuple[httpx.AsyncClient, str],
) -> None:
    client, database_url = seeded
    read = bearer(api_token(database_url, "read"))
    answer = await client.delete("/v1/events/default/attendees/a-erase", headers=read)
    assert answer.status_code == 403
    assert (await client.delete("/v1/events/nope/attendees/a-erase")).status_code == 404
    assert (await client.delete("/v1/events/default/attendees/" + "x" * 300)).status_code == 400
    assert (await client.get("/v1/events/default/attendees/a-erase")).json()["attendee"][
        "email"
    ] == ERASED["email"]


async def test_subject_find_and_export(seeded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = seeded
    found = (
        await client.get("/v1/subjects", params={"email": " Zbigniewa.Przybyszewska@EXAMPLE.org"})
    ).json()
    assert found == {
        "email_found": True,
        "subjects": [{"event": "default", "attendee_id": "a-erase"}],
    }
    nobody = (await client.get("/v1/subjects", params={"email": "nobody@example.org"})).json()
    assert nobody == {"email_found": False, "subjects": []}
    exported = (await client.get("/v1/subjects/export", params={"email": ERASED["email"]})).json()
    (subject,) = exported["subjects"]
    assert subject["roster"]["email"] == ERASED["email"]
    assert [p["reference"] for p in subject["payments"]] == ["R-E1"]
    assert subject["presence"][0]["inside"] is True
    bodies = [d["body"] for d in subject["deliveries"]]
    assert bodies[0]["attendee"] == ERASED
    assert len(bodies) == 4
    # After erasure: found no more; nothing to export.
    assert (await client.delete("/v1/events/default/attendees/a-erase")).status_code == 200
    after = (await client.get("/v1/subjects", params={"email": ERASED["email"]})).json()
    assert after == {"email_found": False, "subjects": []}


def test_a_wrong_or_missing_master_key_is_refused_and_loses_nothing(
    database_url: str, tmp_path: Path
) -> None:
    store = DeliveryStore(database_url, pool_size=1)
    try:
        store.append([_recorded(SEED[0], "e1")])
    finally:
        store.close()
    empty = tmp_path / "fresh-data-dir"
    # What a start with an empty data directory and no ROLLCALL_MASTER_KEY holds: a new key.
    missing = keys.Keyring(secrets.token_bytes(32), path=empty / "master.key", persisted=False)
    with pytest.raises(keys.MasterKeyMissing, match="restore the original"):
        DeliveryStore(database_url, pool_size=1, keyring=missing)
    assert not (empty / "master.key").exists()
    other = keys.Keyring(bytes(32))
    with pytest.raises(keys.MasterKeyMissing, match="not the one in ROLLCALL_MASTER_KEY"):
        DeliveryStore(database_url, pool_size=1, keyring=other)
    store = DeliveryStore(database_url, pool_size=1)
    try:
        assert [s.state.body for s in store.read(0, 10)] == [SEED[0]]
    finally:
        store.close()


def test_a_delivery_stored_before_encryption_stays_a_duplicate(database_url: str) -> None:
    """An id-less delivery stored under the old bare-hash key, retried after the change."""
    store = DeliveryStore(database_url, pool_size=1)
    old = SEED[2]  # the one without a delivery id
    legacy = _recorded(old, None)
    with psycopg.connect(database_url) as conn:
        state = json.dumps(
            {
                "timestamp": "2026-05-14T08:02:00Z", "slug": "default",
                "body": base64.b64encode(old).decode(), "headers": {}, "verified_by": "token",
                "delivery_id": None, "event_type": "AttendeeUpdated", "attendee_id": "a-erase",
                "occurred_at": None, "parser_version": PARSER_VERSION, "quarantine_reason": None,
            }
        ).encode()  # fmt: skip
        conn.execute(
            "INSERT INTO rollcall.deliveries_events (originator_id, originator_version, topic, "
            "state) VALUES (%s, 1, %s, %s)",
            (legacy_delivery_key("default", old), "service.store:DeliveryRecorded", state),
        )
        conn.execute(
            "UPDATE rollcall.crypto_state SET cutover = "
            "(SELECT max(notification_id) FROM rollcall.deliveries_events)"
        )
    store.close()
    store = DeliveryStore(database_url, pool_size=1)
    try:
        assert legacy.originator_id != legacy_delivery_key("default", old)
        assert store.append([legacy]) == [None]
        assert store.append([_recorded(SEED[0], "e1")])[0] is not None
        assert [s.state.body for s in store.read(0, 10)] == [old, SEED[0]]
    finally:
        store.close()


def _recorded(data: bytes, delivery_id: str | None) -> DeliveryRecorded:
    from service.config import EventConfig
    from service.http.intake import delivery_record

    record = delivery_record(EventConfig(slug="default", secrets=("s",)), {}, data, "token")
    assert record.delivery_id == delivery_id
    return record


async def test_retention_erases_an_event_past_its_period(
    seeded: tuple[httpx.AsyncClient, str],
) -> None:
    client, database_url = seeded
    rows = stored_rows(database_url)
    last_received = max(
        datetime.fromisoformat(r["timestamp"]) for r in rows if r["quarantine_reason"] is None
    )
    (state,) = privacy.retention(database_url, {"default": 30})
    assert state.last_delivery_at == last_received
    assert state.erase_after == last_received + timedelta(days=30)
    assert state.attendees_with_data == 2
    payments = view_rows(database_url)["payments"]
    store = DeliveryStore(database_url, pool_size=1)
    try:
        assert privacy.sweep(store, database_url, {"default": 30}, last_received) == 0
        later = last_received + timedelta(days=30, seconds=1)
        assert privacy.sweep(store, database_url, {"default": 30}, later) == 2
        assert privacy.sweep(store, database_url, {"default": 30}, later) == 0
    finally:
        store.close()
    wait_until_caught_up(database_url)
    (state,) = privacy.retention(database_url, {"default": 30})
    assert state.attendees_with_data == 0
    dump = readable(pg_dump(database_url))
    for needle in [*NEEDLES, KEPT["email"], KEPT["lastName"]]:
        assert needle not in dump, needle
    assert view_rows(database_url)["payments"] == payments  # the ledger stays
    assert not any(n.encode() in row["body"] for row in stored_rows(database_url) for n in NEEDLES)
    roster = (await client.get("/v1/events/default/roster")).json()["items"]
    assert {(a["attendee_id"], a["email"]) for a in roster} == {("a-erase", None), ("a-keep", None)}


async def test_the_command_line_finds_exports_and_erases(
    seeded: tuple[httpx.AsyncClient, str], tmp_path: Path
) -> None:
    client, database_url = seeded
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLCALL_", "DATABASE_"))}
    env.update(
        DATABASE_URL=database_url,
        ROLLCALL_DATA_DIR=str(tmp_path / "cli"),
        ROLLCALL_MASTER_KEY=os.environ[keys.MASTER_KEY_ENV],
    )

    def rollcall(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    found = rollcall("subject", "find", "--email", ERASED["email"].upper())
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["subjects"] == [{"event": "default", "attendee_id": "a-erase"}]
    exported = rollcall("subject", "export", "--email", ERASED["email"])
    assert json.loads(exported.stdout)["subjects"][0]["deliveries"][0]["body"]["attendee"] == ERASED
    assert rollcall("erase", "--event", "nope", "--attendee", "a-erase").returncode == 2
    erased = rollcall("erase", "--event", "default", "--attendee", "a-erase", "--by", "dpo")
    assert erased.returncode == 0, erased.stderr
    receipt = json.loads(erased.stdout)
    assert (receipt["status"], receipt["erased_by"], receipt["views_caught_up"]) == (
        "erased",
        "dpo",
        True,
    )
    assert not any(n in erased.stdout + erased.stderr for n in NEEDLES)
    assert not any(n in readable(pg_dump(database_url)) for n in NEEDLES)
    person = (await client.get("/v1/events/default/attendees/a-erase")).json()["attendee"]
    assert person["email"] is None

    # The organiser lifts the block: what JTE sends from now on is kept again (sealed).
    lifted = rollcall("erase", "--event", "default", "--attendee", "a-erase", "--lift")
    assert json.loads(lifted.stdout)["status"] == "lifted", lifted.stderr
    again = rollcall("erase", "--event", "default", "--attendee", "a-erase", "--lift")
    assert json.loads(again.stdout)["status"] == "not_erased"
    update = body("AttendeeUpdated", {"id": "a-erase", "firstName": "Nowa"}, "12:00:00", "u-9")
    answer = await client.post("/webhooks/jte", content=update, headers=token_headers())
    assert answer.status_code == 200
    wait_until_caught_up(database_url)
    assert stored_rows(database_url)[-1]["sealed"] is not None
    assert stored_rows(database_url)[-1]["body"] == update
    person = (await client.get("/v1/events/default/attendees/a-erase")).json()["attendee"]
    assert person["first_name"] == "Nowa" and person["email"] is None
    # A rebuild reads the bodies sealed under the destroyed key as skeletons, the new one whole.
    live = view_rows(database_url)
    rebuild(database_url, list(VIEW_NAMES), SOURCE)
    assert view_rows(database_url) == live


# --- Deliveries stored before encryption ---------------------------------------------------

PHONE = "+48 600 700 800"


def store_before_encryption(database_url: str, bodies: list[bytes]) -> None:
    """Store deliveries as the code before encryption did (95d5eaf): plaintext state without a
    `sealed` field, id-less ones under the bare-hash key; then the first store opened with a
    master key records them as before its cutover."""
    from service.config import EventConfig
    from service.http.intake import delivery_record

    ensure_store(database_url, check_key=False)
    with psycopg.connect(database_url) as conn:
        for data in bodies:
            record = delivery_record(EventConfig(slug="default", secrets=("s",)), {}, data, "token")
            state = {
                k: v
                for k, v in record.__dict__.items()
                if k not in ("originator_id", "originator_version", "sealed", "_reading")
            }
            key = (
                legacy_delivery_key("default", data)
                if record.delivery_id is None
                else record.originator_id
            )
            conn.execute(
                "INSERT INTO rollcall.deliveries_events (originator_id, originator_version, "
                "topic, state) VALUES (%s, 1, %s, %s)",
                (key, "service.store:DeliveryRecorded", stored_form.encode(state)),
            )
    DeliveryStore(database_url, pool_size=1).close()  # records the cutover


def raw_states(database_url: str) -> dict[int, bytes]:
    with psycopg.connect(database_url) as conn:
        return {
            p: bytes(s)
            for p, s in conn.execute(
                "SELECT notification_id, state FROM rollcall.deliveries_events"
            )
        }


async def test_erasure_rewrites_deliveries_stored_before_encryption(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    store_before_encryption(database_url, [*SEED, QUARANTINED])
    service = start_service()
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        client.headers.update(bearer(api_token(database_url, "admin")))
        # Sealed ones after the change, about both.
        for late in (
            body("AttendeeCheckedOut", {"id": "a-erase"}, "12:00:00", "s1"),
            body("AttendeeCheckedOut", {"id": "a-keep"}, "12:01:00", "s2"),
        ):
            answer = await client.post("/webhooks/jte", content=late, headers=token_headers())
            assert answer.status_code == 200, answer.text
        wait_until_caught_up(database_url)
        assert all(n in readable(pg_dump(database_url)) for n in [*NEEDLES, PHONE])  # premise
        before = raw_states(database_url)
        views_before = view_rows(database_url)

        answer = await client.delete("/v1/events/default/attendees/a-erase")
        assert answer.status_code == 200, answer.text
        # Its four plaintext deliveries and the quarantined one naming them.
        assert answer.json()["plaintext_rewritten"] == 5

        dump = readable(pg_dump(database_url))
        for needle in [*NEEDLES, PHONE]:
            assert needle not in dump, needle
        assert KEPT["lastName"] in dump and KEPT["email"] in dump  # theirs stay as stored
        after = raw_states(database_url)
        changed = {p for p in before if after[p] != before[p]}
        assert len(changed) == 5
        for position in changed:  # only the body changed, to a skeleton
            old, new = json.loads(before[position]), json.loads(after[position])
            assert {k: v for k, v in old.items() if k != "body"} == {
                k: v for k, v in new.items() if k != "body"
            }
            assert old.get("attendee_id") in ("a-erase", None)
        rows = {row["position"]: row for row in stored_rows(database_url)}
        assert rows[min(changed)]["body"] == (
            b'{"event":"AttendeeRegistered","attendee":{"id":"a-erase"},"id":"e1",'
            b'"occurredAt":"2026-05-14T08:00:00+00:00"}'
        )
        assert json.loads(rows[sorted(changed)[2]]["body"])["attendee"]["payment"] == {
            "amount": "349.00", "currency": "PLN", "method": "payu", "reference": "R-E1",
        }  # fmt: skip

        views_after = view_rows(database_url)
        for name in ("payments", "presence", "occupancy", "occupancy_changes"):
            assert views_after[name] == views_before[name], name
        keep = [r for r in views_before["roster"] if r[1] == "a-keep"]
        assert [r for r in views_after["roster"] if r[1] == "a-keep"] == keep
        rebuild(database_url, list(VIEW_NAMES), SOURCE)
        assert view_rows(database_url) == views_after
        # The retry of an id-less delivery stored then is still a duplicate.
        again = await client.post("/webhooks/jte", content=SEED[2], headers=token_headers())
        assert again.json() == {"status": "duplicate"}

    # The trigger still refuses every other change, even to the table's owner.
    with psycopg.connect(database_url, autocommit=True) as conn:
        kept = min(p for p in before if p not in changed)
        for statement in (
            f"UPDATE rollcall.deliveries_events SET state = state WHERE notification_id = {kept}",
            f"DELETE FROM rollcall.deliveries_events WHERE notification_id = {min(changed)}",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            # Setting the function's marker by hand allows no other change either.
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute("SELECT set_config('rollcall.scrubbing', 'default', true)")
                conn.execute(statement.replace("state = state", "topic = 'x'"))
        # The function itself rewrites only an erased attendee's plaintext, as skeletons.
        skeleton_state = after[min(changed)]
        for attendee, position in (("a-keep", kept), ("a-erase", kept), ("a-erase", max(before))):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(
                    "SELECT rollcall.scrub_plaintext('default', %s, '{}', %s, %s)",
                    (attendee, [position], [skeleton_state]),
                )
        tampered = json.loads(after[min(changed)])
        tampered["body"] = base64.b64encode(
            b'{"event":"AttendeeRegistered","attendee":{"id":"a-erase","email":"x@y"},"id":"e1"}'
        ).decode()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "SELECT rollcall.scrub_plaintext('default', 'a-erase', '{}', %s, %s)",
                ([min(changed)], [json.dumps(tampered).encode()]),
            )
    assert raw_states(database_url) == after


async def test_an_erasure_block_lifts_over_http(seeded: tuple[httpx.AsyncClient, str]) -> None:
    client, database_url = seeded
    path = "/v1/events/default/attendees/a-erase/lift"
    answer = await client.post(path)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "not_erased", "event": "default", "attendee_id": "a-erase"}
    read = bearer(api_token(database_url, "read"))
    assert (await client.post(path, headers=read)).status_code == 403
    assert (await client.post("/v1/events/nope/attendees/a-erase/lift")).status_code == 404
    assert (await client.post("/v1/events/default/attendees/%20/lift")).status_code == 400
    assert (await client.delete("/v1/events/default/attendees/a-erase")).status_code == 200
    # Blocked: an update is kept as its skeleton only.
    first = body("AttendeeUpdated", {"id": "a-erase", "firstName": "Pierwsza"}, "12:00:00", "u-1")
    assert (await client.post("/webhooks/jte", content=first, headers=token_headers())).is_success
    answer = await client.post(path)
    assert answer.json() == {"status": "lifted", "event": "default", "attendee_id": "a-erase"}
    assert (await client.post(path)).json()["status"] == "not_erased"
    # Lifted: the next one is kept whole (sealed under a new key) and reaches the roster.
    second = body("AttendeeUpdated", {"id": "a-erase", "firstName": "Druga"}, "12:01:00", "u-2")
    assert (await client.post("/webhooks/jte", content=second, headers=token_headers())).is_success
    wait_until_caught_up(database_url)
    rows = stored_rows(database_url)
    assert (rows[-2]["sealed"], rows[-1]["body"]) == (None, second)
    assert rows[-1]["sealed"] is not None
    person = (await client.get("/v1/events/default/attendees/a-erase")).json()["attendee"]
    assert person["first_name"] == "Druga" and person["email"] is None
    spec = (await client.get("/openapi.json")).json()
    assert "post" in spec["paths"]["/v1/events/{event}/attendees/{attendee_id}/lift"]


def test_a_registration_of_an_attendee_known_elsewhere_keeps_their_key(database_url: str) -> None:
    """A writer takes a registration's attendee to be new without asking (fewer lookups at
    intake); when another process had their key, or an erasure's block, it is told and
    seals again with theirs."""
    store = DeliveryStore(database_url, pool_size=1)
    try:
        store.append([_recorded(SEED[0], "e1"), _recorded(SEED[1], "k1")])
        store.erase("default", "a-keep", "test")
    finally:
        store.close()
    again = body("AttendeeRegistered", ERASED, "13:00:00", "e9")
    blocked = body("AttendeeRegistered", KEPT, "13:01:00", "k9")
    store = DeliveryStore(database_url, pool_size=1)  # another process: nothing cached
    try:
        assert None not in store.append([_recorded(again, "e9"), _recorded(blocked, "k9")])
    finally:
        store.close()
    rows = stored_rows(database_url)
    assert rows[-2]["body"] == again and rows[-2]["sealed"] is not None
    assert rows[-1]["sealed"] is None and KEPT["email"].encode() not in rows[-1]["body"]
    with psycopg.connect(database_url) as conn:
        count = conn.execute(
            "SELECT count(*) FROM rollcall.data_keys WHERE kind = 'a' AND subject = 'a-erase'"
        ).fetchone()
    assert count == (1,)


async def test_a_quarantined_delivery_naming_an_erased_attendee_keeps_nothing(
    seeded: tuple[httpx.AsyncClient, str],
) -> None:
    client, database_url = seeded
    assert (await client.delete("/v1/events/default/attendees/a-erase")).status_code == 200
    # Unreadable (no attendee id), naming them by email only; and one naming nobody erased.
    naming = body(
        "AttendeeRegistered", {k: v for k, v in ERASED.items() if k != "id"}, "14:00:00", "q2"
    )
    other = body("AttendeeRegistered", {"email": "someone.else@example.org"}, "14:01:00", "q3")
    for delivery in (naming, other):
        answer = await client.post("/webhooks/jte", content=delivery, headers=token_headers())
        assert answer.status_code == 202, answer.text
    rows = stored_rows(database_url)
    assert (rows[-2]["sealed"], rows[-2]["body"]) == (None, b"{}")
    assert rows[-1]["sealed"] is not None and rows[-1]["body"] == other
    assert not any(n in readable(pg_dump(database_url)) for n in NEEDLES)
    # Once the block is lifted, such a delivery is kept (sealed) again.
    assert (await client.post("/v1/events/default/attendees/a-erase/lift")).status_code == 200
    again = body("AttendeeRegistered", {"email": ERASED["email"]}, "14:02:00", "q4")
    assert (await client.post("/webhooks/jte", content=again, headers=token_headers())).is_success
    last = stored_rows(database_url)[-1]
    assert last["sealed"] is not None and last["body"] == again


def test_a_writer_holding_a_key_from_before_an_erasure_keeps_nothing_after_it(
    database_url: str,
) -> None:
    """The race: a writer cached the attendee's key, then another process erased them; the
    writer's next delivery about them is refused under its stale keys and sealed again: a
    skeleton, their content not kept."""
    writer = DeliveryStore(database_url, pool_size=1)
    eraser = DeliveryStore(database_url, pool_size=1)
    try:
        writer.append([_recorded(SEED[0], "e1")])  # its key is now cached in `writer`
        eraser.erase("default", "a-erase", "test")
        late = body("AttendeeUpdated", ERASED, "15:00:00", "late-9")
        assert writer.append([_recorded(late, "late-9")])[0] is not None
    finally:
        writer.close()
        eraser.close()
    last = stored_rows(database_url)[-1]
    assert last["delivery_id"] == "late-9" and last["sealed"] is None
    assert not any(n.encode() in last["body"] for n in NEEDLES)


def test_emails_are_found_anywhere_in_an_unreadable_body_and_a_hostile_one_is_read_once() -> None:
    body = b'{"e":"Ann.Nowak+x@example.co.uk","b":"mailto:bob@ex.com;c@d.pl, e@f"}'
    assert keys.emails_in(body) == {"Ann.Nowak+x@example.co.uk", "bob@ex.com", "c@d.pl"}
    # Near-limit runs of address characters: the plain pattern backtracked from every position
    # (quadratic: minutes for 1 MB, with a group-commit writer held); this returns at once
    # (pytest's timeout is the bound, not a clock here).
    assert keys.emails_in(b"h" * 1_000_000 + b"@" + b"x" * 1_000_000) == set()
    assert keys.emails_in(b"h" * 1_000_000 + b"@d.pl") == {"h" * 1_000_000 + "@d.pl"}


def test_a_writer_whose_key_cache_is_emptied_mid_batch_still_seals_every_delivery(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the full erasure drill found: the other group-commit writer, its batch refused
    for stale keys, empties the shared key cache while this writer seals a batch. A delivery
    whose key this batch had found cached must still be sealed under it, never stored as a
    skeleton (its content lost, for an attendee nobody erased)."""
    store = DeliveryStore(database_url, pool_size=1)
    lookup = keys.wrapped_keys

    def another_writer_forgets(cur: Any, subjects: Any) -> Any:
        store._sealer.forget()  # what a writer whose batch met STALE_KEYS does, meanwhile
        return lookup(cur, subjects)

    later = body("AttendeeUpdated", {**KEPT, "company": "Jawna-Firma-W2"}, "08:05:00", "k9")
    # Someone whose key is not cached yet, so that the batch looks keys up.
    other = body("AttendeeCheckedIn", {"id": "a-other"}, "08:06:00", "o1")
    try:
        store.append([_recorded(SEED[1], "k1")])  # a-keep's key is now cached
        monkeypatch.setattr(keys, "wrapped_keys", another_writer_forgets)
        positions = store.append([_recorded(later, "k9"), _recorded(other, "o1")])
        assert None not in positions
    finally:
        store.close()
    sealed = {r["delivery_id"]: r["sealed"] for r in stored_rows(database_url)}
    assert sealed["k9"] is not None and sealed["o1"] is not None
    read_back = {s.delivery_id: s.body for s in stored_deliveries(database_url)}
    assert read_back["k9"] == later and read_back["o1"] == other


def test_the_projections_key_cache_keeps_its_hits_when_it_fills_up(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose keys were partly cached and partly new, when the new ones fill the cache
    (which is then emptied), still gets every key: the hits once vanished with the cache, and
    their deliveries read as skeletons (views without the person, for an attendee nobody
    erased) once a process held 10,000 keys."""
    store = DeliveryStore(database_url, pool_size=1)
    try:
        store.append([_recorded(SEED[0], "e1"), _recorded(SEED[1], "k1")])
    finally:
        store.close()
    other = body("AttendeeRegistered", {**KEPT, "id": "a-third"}, "08:03:00", "t1")
    store = DeliveryStore(database_url, pool_size=1)
    try:
        store.append([_recorded(other, "t1")])
    finally:
        store.close()
    subject = {a: ("default", keys.ATTENDEE, a) for a in ("a-erase", "a-keep", "a-third")}
    monkeypatch.setattr(keys, "_CACHE_MAX", 2)
    cache = keys.KeyCache()
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        first = cache.aeads(cur, keys.active(), {subject["a-erase"], subject["a-keep"]})
        assert set(first) == {subject["a-erase"], subject["a-keep"]}
        # Two cached, one new: the cache overflows and is emptied while the batch is served.
        every = cache.aeads(cur, keys.active(), set(subject.values()))
    assert set(every) == set(subject.values())
    assert all(aead is not None for aead in every.values())


def test_a_writers_key_cache_stays_bounded_and_every_delivery_is_still_sealed(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server running for months meets ever more attendees: its writer keeps at most
    _KEYS_MAX opened keys. Once the cache starts again, an attendee met before has their key
    looked up (an update) or guessed new and found taken (a registration sent again): either
    way the delivery is sealed under their one key, never a second one, and reads back whole."""
    monkeypatch.setattr(store_module, "_KEYS_MAX", 3)
    people = [{**KEPT, "id": f"a-{n}", "company": f"Firma-{n}"} for n in range(8)]
    first = [body("AttendeeRegistered", p, f"08:0{n}:00", f"r{n}") for n, p in enumerate(people)]
    again = [
        body("AttendeeUpdated", {**people[0], "company": "Firma-0b"}, "09:00:00", "u0"),
        body("AttendeeRegistered", {**people[1], "company": "Firma-1b"}, "09:01:00", "r1b"),
    ]
    store = DeliveryStore(database_url, pool_size=1)
    try:
        for data in first + again:  # one delivery a batch: each commit may start the cache again
            assert store.append([_recorded(data, json.loads(data)["id"])])[0] is not None
            assert len(store._sealer._keys) <= 3
    finally:
        store.close()
    rows = stored_rows(database_url)
    assert all(r["sealed"] is not None for r in rows)
    read_back = {s.delivery_id: s.body for s in stored_deliveries(database_url)}
    assert read_back == {json.loads(data)["id"]: data for data in first + again}
    with psycopg.connect(database_url) as conn:
        held = conn.execute(
            f"SELECT subject, count(*) FROM {INTERNAL}.{keys.KEYS_TABLE} GROUP BY subject"
        ).fetchall()
    assert sorted(held) == sorted((p["id"], 1) for p in people)
