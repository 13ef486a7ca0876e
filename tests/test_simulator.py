"""`rollcall simulate`: a deterministic, realistic JTE day; signing in every mode; JSON lines; the
command line, which sends the day to the real service (service/jte/sender.py:
tests/test_sender.py)."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from domain.interpret import EVENT_TYPES, Interpreted, Unreadable, interpret
from service.config import EventConfig
from service.http.verification import Rejected, Verified, verify
from service.jte.signing import sign
from service.jte.simulator import (
    SimulatedDelivery,
    SimulationOptions,
    read_jsonl,
    sign_all,
    simulate,
    write_jsonl,
)
from tests.helpers import SECRET, RunningService

NOISY = SimulationOptions(
    seed=5, duplicates=0.1, out_of_order=0.2, bad_signatures=0.05, malformed=0.05
)
WHSEC = "whsec_" + base64.b64encode(b"a 32-byte key for standard hooks").decode()


@pytest.fixture(scope="module")
def day() -> list[SimulatedDelivery]:
    """The default day (200 attendees), without any noise."""
    return simulate(SimulationOptions())


def read(deliveries: list[SimulatedDelivery]) -> list[Interpreted]:
    readings = [interpret(d.body) for d in deliveries]
    assert all(isinstance(r, Interpreted) for r in readings)
    return readings  # type: ignore[return-value]


def histories(deliveries: list[SimulatedDelivery]) -> dict[str, list[Interpreted]]:
    """Each attendee's deliveries in occurrence order."""
    per_attendee: dict[str, list[Interpreted]] = defaultdict(list)
    for reading in read(deliveries):
        per_attendee[reading.attendee_id].append(reading)
    for readings in per_attendee.values():
        readings.sort(key=lambda r: r.occurred_at or datetime.min.replace(tzinfo=UTC))
    return per_attendee


def payments(deliveries: list[SimulatedDelivery]) -> list[dict[str, Any]]:
    return [
        r.attendee["payment"]
        for r in read(deliveries)
        if r.event_type == "AttendeePaymentConfirmed"
    ]


# --- determinism ----------------------------------------------------------------------------


def test_same_options_give_the_same_day_and_another_seed_another() -> None:
    first, again = simulate(NOISY), simulate(NOISY)
    assert first == again
    other = simulate(SimulationOptions(seed=6, duplicates=0.1))
    assert [d.body for d in other] != [d.body for d in first]
    assert not {d.delivery_id for d in other} & {d.delivery_id for d in first}


def test_noise_leaves_the_day_itself_unchanged(day: list[SimulatedDelivery]) -> None:
    noisy = simulate(
        SimulationOptions(duplicates=0.3, out_of_order=0.5, bad_signatures=0.1, malformed=0.1)
    )
    accepted = [d for d in noisy if d.expect == "accepted"]
    assert sorted(d.body for d in accepted) == sorted(d.body for d in day)
    assert [d.body for d in accepted] != [d.body for d in day]  # but in another order


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicates"):
        simulate(SimulationOptions(duplicates=1.5))
    with pytest.raises(ValueError, match="attendees"):
        simulate(SimulationOptions(attendees=0))


# --- a realistic day -----------------------------------------------------------------------


def test_every_delivery_reads_as_what_it_simulates(day: list[SimulatedDelivery]) -> None:
    for delivery, reading in zip(day, read(day), strict=True):
        assert reading.event_type == delivery.event_type
        assert reading.attendee_id == delivery.attendee_id
        assert reading.delivery_id == delivery.delivery_id
        assert delivery.expect == "accepted" and not delivery.forged
    assert len({d.delivery_id for d in day}) == len(day)
    assert {d.event_type for d in day} == EVENT_TYPES
    assert all(re.fullmatch(r"a-\d{6}", d.attendee_id or "") for d in day)


def test_attendees_look_like_a_registration_form(day: list[SimulatedDelivery]) -> None:
    registrations = [r.attendee for r in read(day) if r.event_type == "AttendeeRegistered"]
    roles = Counter(a["role"] for a in registrations)
    assert roles["attendee"] > len(registrations) / 2
    assert roles["speaker"] and roles["organizer"] and roles[""]
    admins = [a for a in registrations if a["addedByAdmin"] is True]
    assert admins and len(admins) < len(registrations) / 2
    staff = [a for a in registrations if a["role"] in ("speaker", "organizer")]
    assert sum(a["addedByAdmin"] for a in staff) > len(staff) / 2
    assert {"Early bird", "Regular", "VIP", "Student", "Speaker", "Staff"} <= {
        a["ticket"] for a in registrations
    }
    keys = set().union(*registrations)
    assert {"firstName", "lastName", "email", "company", "dietaryPreferences", "tShirtSize"} <= keys
    names = "".join(a["firstName"] + a["lastName"] for a in registrations)
    assert set("ąćęłńóśźż") & set(names.lower()), "Polish names"
    assert not names.isascii()
    emails = [a["email"] for a in registrations]
    assert all(e.isascii() and "@" in e for e in emails)


def test_weeks_before_the_day(day: list[SimulatedDelivery]) -> None:
    opening = datetime(2026, 5, 14, 8, tzinfo=UTC)
    people = histories(day)
    before = [r for r in read(day) if r.occurred_at and r.occurred_at < opening]
    assert min(r.occurred_at for r in before if r.occurred_at) < opening - timedelta(days=21)
    imports = [r for r in before if r.event_type == "AttendeeImported"]
    assert len(imports) >= 3
    assert len({r.occurred_at.replace(second=0) for r in imports if r.occurred_at}) == 1
    updating = [
        r
        for r in imports
        if people[r.attendee_id][0].event_type == "AttendeeRegistered"
        and people[r.attendee_id][0].attendee["ticket"] != r.attendee["ticket"]
    ]
    assert updating, "an import row updates an attendee who registered before"
    updates = [r for r in before if r.event_type == "AttendeeUpdated"]
    assert len(updates) >= 5
    deleted = [h for h in people.values() if any(r.event_type == "AttendeeDeleted" for r in h)]
    revived = [h for h in deleted if h[-1].event_type != "AttendeeDeleted"]
    assert len(deleted) >= 2 and revived
    assert any(
        r.attendee == {"id": r.attendee_id} for h in deleted for r in h if "Deleted" in r.event_type
    )


def test_payments_are_exact_in_several_currencies_and_methods(
    day: list[SimulatedDelivery],
) -> None:
    paid = payments(day)
    assert {p["currency"] for p in paid} == {"PLN", "EUR"}
    assert Counter(p["currency"] for p in paid).most_common(1)[0][0] == "PLN"
    assert {p["method"] for p in paid} == {"payu", "przelewy24", "tpay", "bank_transfer"}
    prefixes = {"payu": "PAYU-", "przelewy24": "P24-", "tpay": "TPAY-", "bank_transfer": "BT/"}
    for payment in paid:
        amount = payment["amount"]
        assert isinstance(amount, Decimal | str)
        assert str(amount) == f"{Decimal(amount):.2f}" and Decimal(amount) > 0
        assert payment["reference"].startswith(prefixes[payment["method"]])
    assert any(isinstance(p["amount"], Decimal) for p in paid), "some amounts are JSON numbers"
    assert any(isinstance(p["amount"], str) for p in paid), "most are strings"
    # A payment confirmed twice: two deliveries, one reference.
    references = Counter(p["reference"] for p in paid)
    assert 1 <= sum(n == 2 for n in references.values()) < len(paid) / 10


def test_the_day_itself(day: list[SimulatedDelivery]) -> None:
    opening, closing = datetime(2026, 5, 14, 8, tzinfo=UTC), datetime(2026, 5, 14, 18, tzinfo=UTC)
    on_site = [r for r in read(day) if "Checked" in r.event_type]
    assert all(r.occurred_at and opening <= r.occurred_at < closing for r in on_site)
    first_ins: dict[str, datetime | None] = {}
    for reading in on_site:
        if reading.event_type == "AttendeeCheckedIn":
            first_ins.setdefault(reading.attendee_id, reading.occurred_at)
    peak = [t for t in first_ins.values() if t and opening + timedelta(minutes=30) <= t]
    peak = [t for t in peak if t < opening + timedelta(minutes=90)]
    assert len(peak) > len(first_ins) / 3, "check-ins peak 08:30-09:30"

    sequences = {
        attendee: [r.event_type.removeprefix("AttendeeChecked") for r in history]
        for attendee, history in histories(day).items()
    }
    assert any("In,Out,In" in ",".join(s) for s in sequences.values()), "re-entries"
    walk_ins = [s for s in sequences.values() if s[0] == "In"]
    assert walk_ins and all("AttendeeRegistered" in s for s in walk_ins)
    repeats = strays = 0
    for history in sequences.values():
        inside = False
        for event in history:
            repeats += event == "In" and inside
            strays += event == "Out" and not inside
            inside = event == "In" or (inside and event != "Out")
    assert repeats >= 1 and strays >= 1
    still_inside = [s for s in sequences.values() if "In" in s and s[-1] != "Out"]
    checked_out = [s for s in sequences.values() if "In" in s and s[-1] == "Out"]
    assert still_inside and len(checked_out) > len(still_inside)
    during = [r for r in read(day) if r.occurred_at and r.occurred_at >= opening]
    assert {"AttendeeRegistered", "AttendeeUpdated"} <= {r.event_type for r in during}


def test_another_day_and_size(day: list[SimulatedDelivery]) -> None:
    small = simulate(SimulationOptions(attendees=20, day=date(2027, 1, 9), seed=9))
    assert 40 < len(small) < len(day) / 4
    dates = {
        r.occurred_at.date() for r in read(small) if r.occurred_at and "Checked" in r.event_type
    }
    assert dates == {date(2027, 1, 9)}


# --- the noise a real sender adds ------------------------------------------------------------


def test_noise_shares_take_effect() -> None:
    noisy = simulate(NOISY)
    expects = Counter(d.expect for d in noisy)
    base = expects["accepted"]
    assert abs(expects["duplicate"] - 0.1 * base) <= 1
    assert expects["unauthorized"] == sum(d.forged for d in noisy) == round(0.05 * base)
    assert expects["quarantined"] == round(0.05 * base)
    assert (
        len({d.body for d in noisy if d.expect != "duplicate"}) == len(noisy) - expects["duplicate"]
    )


def test_expectations_follow_the_list_order() -> None:
    seen: set[str] = set()
    for delivery in simulate(NOISY):
        first = delivery.delivery_id not in seen
        seen.add(delivery.delivery_id)
        if delivery.forged:
            assert delivery.expect == "unauthorized"
        elif delivery.event_type is None:
            assert first and delivery.expect == "quarantined"
        else:
            assert delivery.expect == ("accepted" if first else "duplicate")


def test_malformed_deliveries_are_unreadable_but_distinct() -> None:
    malformed = [d for d in simulate(NOISY) if d.expect == "quarantined"]
    reasons: Counter[str] = Counter()
    for delivery in malformed:
        reading = interpret(delivery.body)
        assert isinstance(reading, Unreadable)
        assert delivery.body.decode()  # valid UTF-8
        reasons[reading.reason.split(":")[0]] += 1
        assert reading.delivery_id in (None, delivery.delivery_id)
        assert delivery.delivery_id.encode() in delivery.body
    assert set(reasons) == {"body is not valid JSON", "unknown event type", "no attendee id"}


def test_forged_deliveries_read_like_real_ones() -> None:
    forged = [d for d in simulate(NOISY) if d.forged]
    assert forged
    for delivery in forged:
        reading = interpret(delivery.body)
        assert isinstance(reading, Interpreted)
        assert reading.attendee_id == delivery.attendee_id


def occurrence_inversions(deliveries: list[SimulatedDelivery]) -> int:
    times = [r.occurred_at for r in read([d for d in deliveries if d.expect == "accepted"])]
    return sum(a > b for a, b in itertools.pairwise(times) if a and b)


def test_out_of_order_share_displaces_deliveries() -> None:
    assert occurrence_inversions(simulate(SimulationOptions(duplicates=0.2))) == 0
    assert occurrence_inversions(simulate(SimulationOptions(out_of_order=0.2))) > 20


# --- signing ------------------------------------------------------------------------------------

MODES = [
    EventConfig(slug="t", mode="token", secrets=(SECRET,)),
    EventConfig(slug="t", mode="token", secrets=("plain",), token_header="x-jte-secret"),
    EventConfig(slug="h", mode="hmac-sha256", secrets=(SECRET,)),
    EventConfig(slug="h", mode="hmac-sha256", secrets=(SECRET,), timestamp_header="x-ts"),
    EventConfig(slug="d", mode="default", secrets=(SECRET, "old secret")),
    EventConfig(slug="d", mode="default", secrets=(SECRET,), timestamp_header="x-ts"),
    EventConfig(slug="s", mode="standard-webhooks", secrets=(WHSEC,)),
    EventConfig(slug="s", mode="standard-webhooks", secrets=(SECRET,)),
]
BODY = '{"event":"AttendeeCheckedIn","id":"d-1","attendee":{"id":"a-1","firstName":"Łucja"}}'


def on_the_wire(headers: dict[str, str]) -> dict[str, bytes]:
    return {name.lower(): value.encode("latin-1") for name, value in headers.items()}


@pytest.mark.parametrize("event", MODES, ids=lambda e: f"{e.mode}-{e.timestamp_header}")
def test_sign_gives_headers_that_verify(event: EventConfig) -> None:
    body, now = BODY.encode(), time.time()
    headers = sign(event, body, now=now, delivery_id="d-1")
    assert headers["content-type"] == "application/json"
    assert all(isinstance(v, str) for v in headers.values())
    assert verify(event, on_the_wire(headers), body, now) == Verified(
        "token" if event.mode == "token" else event.mode.replace("default", "hmac-sha256")
    )
    wrong = sign(event, body, now=now, secret="not the secret", delivery_id="d-1")
    assert isinstance(verify(event, on_the_wire(wrong), body, now), Rejected)
    stale = verify(event, on_the_wire(headers), body, now + event.tolerance_seconds + 5)
    timestamped = event.timestamp_header or event.mode == "standard-webhooks"
    assert isinstance(stale, Rejected if timestamped else Verified)
    if event.mode != "token":
        tampered = body.replace(b"a-1", b"a-2")
        assert isinstance(verify(event, on_the_wire(headers), tampered, now), Rejected)


def test_a_non_ascii_secret_goes_out_as_utf8() -> None:
    event = MODES[0]
    headers = sign(event, b"{}", now=0)
    assert on_the_wire(headers)["x-webhook-secret"] == SECRET.encode()


def test_rotated_secrets_and_the_reference_standard_webhooks_library() -> None:
    body, now = BODY.encode(), time.time()
    rotated = MODES[4]
    old = sign(rotated, body, now=now, secret="old secret")
    assert verify(rotated, on_the_wire(old), body, now) == Verified("hmac-sha256")
    headers = sign(MODES[6], body, now=now, delivery_id="msg-1")
    assert Webhook(WHSEC).verify(body, headers) == json.loads(body)
    assert headers["webhook-id"] == "msg-1"
    with pytest.raises(ValueError, match="delivery id"):
        sign(MODES[6], body, now=now)


def test_sign_all_signs_forged_ones_with_a_wrong_secret() -> None:
    deliveries = simulate(SimulationOptions(attendees=20, bad_signatures=0.2))
    now = time.time()
    for event in MODES:
        signed = sign_all(deliveries, event, now=now)
        for original, delivery in zip(deliveries, signed, strict=True):
            verdict = verify(event, on_the_wire(delivery.headers), delivery.body.encode(), now)
            assert isinstance(verdict, Rejected if original.forged else Verified)
            assert (delivery.expect, delivery.delivery_id, delivery.slug) == (
                original.expect,
                original.delivery_id,
                event.slug,
            )


def test_json_lines_round_trip(tmp_path: Path) -> None:
    signed = sign_all(simulate(SimulationOptions(attendees=10, malformed=0.2)), MODES[0], now=1)
    write_jsonl(tmp_path / "day.jsonl", signed)
    assert read_jsonl(tmp_path / "day.jsonl") == signed
    stream = io.StringIO()
    write_jsonl(stream, signed)
    assert stream.getvalue() == (tmp_path / "day.jsonl").read_text(encoding="utf-8")
    assert stream.getvalue().count("\n") == len(signed)


# --- the command line -------------------------------------------------------------------------


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLCALL_", "DATABASE_"))}
    clean.update(ROLLCALL_DATA_DIR=str(tmp_path / "data"), **env)
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "simulate", *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_json_lines_deterministically(tmp_path: Path) -> None:
    runs = []
    for name in ("one.jsonl", "two.jsonl"):
        done = cli(tmp_path, "--output", str(tmp_path / name), "--attendees", "20", "--seed", "3")
        assert done.returncode == 0, done.stderr
        runs.append(read_jsonl(tmp_path / name))
        assert f"wrote {len(runs[-1])} deliveries" in done.stdout
    assert [d.body for d in runs[0]] == [d.body for d in runs[1]]
    assert len(runs[0]) == len(simulate(SimulationOptions(attendees=20, seed=3)))
    assert [d.body for d in runs[0]] == [
        d.body.decode() for d in simulate(SimulationOptions(attendees=20, seed=3))
    ]
    secret = (tmp_path / "data" / "secrets" / "default").read_text().strip()
    event = EventConfig(slug="default", secrets=(secret,))
    assert all(
        isinstance(verify(event, on_the_wire(d.headers), d.body.encode(), time.time()), Verified)
        for d in runs[0]
    )

    to_stdout = cli(tmp_path, "--output", "-", "--attendees", "20", "--seed", "3")
    lines = to_stdout.stdout.splitlines()
    assert [json.loads(line)["body"] for line in lines] == [d.body for d in runs[0]]
    assert "wrote" in to_stdout.stderr


def test_cli_unknown_event_is_a_clear_error(tmp_path: Path) -> None:
    done = cli(tmp_path, "--output", str(tmp_path / "x.jsonl"), "--event", "nope")
    assert done.returncode == 1 and "no JTE event 'nope'" in done.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_posts_to_the_service(
    tmp_path: Path, start_service: Callable[..., RunningService]
) -> None:
    service = start_service()
    noise = ["--duplicates", "0.1", "--bad-signatures", "0.1", "--malformed", "0.1"]
    done = cli(tmp_path, "--url", service.url, "--attendees", "15", *noise, ROLLCALL_SECRET=SECRET)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unexpected answers: 0" in done.stdout and "401: " in done.stdout
    wrong = cli(tmp_path, "--url", service.url, "--attendees", "5", ROLLCALL_SECRET="other")
    assert wrong.returncode == 1 and "unexpected answers: 0" not in wrong.stdout
