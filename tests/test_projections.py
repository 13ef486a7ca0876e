"""Projections end to end: the live runner, exactly-once batches, rebuilds, as-of, poison, replay.

Deliveries go in through the real HTTP intake; the views are read back with SQL from the
`analytics` schema and compared with the pure folds, with each other, and with rebuilds.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from domain import ledger, presence, roster
from domain.events import attendee_event
from domain.interpret import Interpreted, interpret
from projections import fold
from projections.fold import PoisonError, apply_records
from projections.rebuild import AsOfBuild, as_of_builds, build_as_of, drop_as_of, rebuild
from projections.registry import VIEW_NAMES
from projections.runner import Runner, ensure_views
from projections.schema import LOCK_NAMESPACE, live_version, runner_lock, versions
from projections.source import read
from projections.status import read_status
from projections.tracking import StalePosition, ViewTracking, positions, view_tracking
from projections.view import Target
from service.config import EventConfig
from service.eventstore.replay import replay_quarantined
from service.eventstore.source import SOURCE
from service.eventstore.store import DeliveryStore
from service.jte.sender import post_all
from service.jte.simulator import SignedDelivery, SimulationOptions, sign_all, simulate
from tests.drill.faults import inside_batch
from tests.drill.snapshot import snapshot, wait_until_caught_up
from tests.helpers import (
    SECRET,
    RunningService,
    api_token,
    bearer,
    delivery,
    make_settings,
    recorded,
    stored_rows,
    token_headers,
    wait_until,
)
from tests.reference import peak

DEFAULT_EVENT = EventConfig(slug="default", secrets=(SECRET,))


def simulated_day(
    attendees: int = 60,
    seed: int = 3,
    *,
    duplicates: float = 0.0,
    out_of_order: float = 0.0,
    malformed: float = 0.0,
) -> list[SignedDelivery]:
    options = SimulationOptions(
        seed=seed,
        attendees=attendees,
        duplicates=duplicates,
        out_of_order=out_of_order,
        malformed=malformed,
    )
    return sign_all(simulate(options), DEFAULT_EVENT, now=time.time())


async def send(
    service: RunningService, deliveries: list[SignedDelivery], concurrency: int = 8
) -> None:
    report = await post_all(service.url, deliveries, concurrency=concurrency)
    assert report.no_answer == 0


def expected_views(database_url: str) -> tuple[dict, dict, dict]:  # type: ignore[type-arg]
    """The pure folds over everything stored: roster, presence per attendee, ledger."""
    events = []
    for row in stored_rows(database_url):
        if row["quarantine_reason"] is not None:
            continue
        reading = interpret(row["body"])
        assert isinstance(reading, Interpreted)
        received = datetime.fromisoformat(row["timestamp"])
        events.append(attendee_event(row["slug"], row["position"], row["key"], received, reading))
    entries = roster.fold(events)
    moves: dict[tuple[str, str], presence.Moves] = {}
    for event in events:
        if presence.is_move(event):
            key = (event.slug, event.attendee_id)
            moves[key] = presence.add(moves.get(key), event)
    payments = [
        ledger.ledger_entry(e) for e in events if e.event_type == "AttendeePaymentConfirmed"
    ]
    return entries, {k: presence.presence(m) for k, m in moves.items()}, ledger.merge(payments)


async def test_live_views_match_the_pure_folds(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service()
    await send(service, simulated_day(duplicates=0.1, out_of_order=0.2, malformed=0.05))
    wait_until_caught_up(database_url)
    entries, presences, payments = expected_views(database_url)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT attendee_id, status, checked_in, paid, amount, currency, email "
            "FROM analytics.roster"
        ).fetchall()
        assert {r[0]: r[1:] for r in rows} == {
            key[1]: (e.status, e.inside, e.paid, e.amount, e.currency, e.fields.get("email"))
            for key, e in entries.items()
        }
        inside = conn.execute("SELECT attendee_id FROM analytics.presence WHERE inside").fetchall()
        assert {r[0] for r in inside} == {k[1] for k, p in presences.items() if p.inside}
        ledger_rows = conn.execute(
            "SELECT entry_key, amount, currency, method FROM analytics.payments"
        ).fetchall()
        assert {r[0]: r[1:] for r in ledger_rows} == {
            k[1]: (e.amount, e.currency, e.method) for k, e in payments.items()
        }
        occupancy = conn.execute(
            "SELECT inside_now, peak, peak_at, check_ins, check_outs, unique_attendees_inside "
            "FROM analytics.occupancy WHERE event = 'default'"
        ).fetchone()
    all_changes = [c for p in presences.values() for c in presence.changes(p)]
    assert occupancy == (
        sum(p.inside for p in presences.values()),
        *peak(all_changes),
        sum(p.check_ins for p in presences.values()),
        sum(p.check_outs for p in presences.values()),
        sum(p.ever_inside for p in presences.values()),
    )


async def test_any_arrival_order_with_duplicates_gives_the_same_views(
    start_service: Callable[..., RunningService],
    database_url: str,
    new_database: Callable[[], str],
    tmp_path: Path,
) -> None:
    day = simulated_day(attendees=40, seed=11)
    shuffled = day + random.Random(5).sample(day, len(day) // 4)
    random.Random(6).shuffle(shuffled)
    first = start_service()
    await send(first, day, concurrency=1)
    wait_until_caught_up(database_url)
    in_order = snapshot(database_url)
    # A second database, the same deliveries shuffled, with a quarter of them sent twice.
    other = new_database()
    second = RunningService(make_settings(other, tmp_path / "second"))
    second.start()
    try:
        await send(second, shuffled, concurrency=8)
        wait_until_caught_up(other)
    finally:
        second.stop()
    assert snapshot(other) == in_order
    assert in_order["roster"] and in_order["occupancy_changes"] and in_order["payments"]


async def test_a_live_built_view_equals_a_rebuilt_one(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service()
    await send(service, simulated_day(duplicates=0.05, out_of_order=0.3))
    wait_until_caught_up(database_url)
    live = snapshot(database_url)
    built = rebuild(database_url, VIEW_NAMES, SOURCE, batch_size=97)
    assert {v.version for v in built} == {2}
    assert snapshot(database_url) == live
    with psycopg.connect(database_url) as conn:
        states = {(v.view, v.version): v.state for v in versions(conn)}
        leftovers = conn.execute(
            "SELECT count(*) FROM pg_tables "
            "WHERE schemaname = 'rollcall_views' AND tablename LIKE '%%_v1'"
        ).fetchone()
    assert states[("roster", 1)] == "retired" and states[("roster", 2)] == "live"
    assert leftovers == (0,), "the replaced version's tables are dropped"
    # The live runner carries on with the new version.
    async with httpx.AsyncClient(base_url=service.url) as client:
        answer = await client.post(
            "/webhooks/jte",
            content=delivery("AttendeeRegistered", attendee_id="after-swap"),
            headers=token_headers(),
        )
        assert answer.json()["status"] == "accepted"
    wait_until_caught_up(database_url)
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT status FROM analytics.roster WHERE attendee_id = 'after-swap'"
        ).fetchone()
    assert found == ("registered",)


def test_an_interrupted_rebuild_leaves_the_live_views_and_resumes(database_url: str) -> None:
    store = DeliveryStore(database_url)
    try:
        store.append(
            [recorded(delivery("AttendeeCheckedIn", attendee_id=f"i-{n}")) for n in range(50)]
        )
    finally:
        store.close()
    Runner(database_url, SOURCE).catch_up()
    live = snapshot(database_url)
    seen = []

    def interrupt_after_two_batches(progress: object) -> None:
        seen.append(progress)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rebuild(
            database_url,
            ["occupancy"],
            SOURCE,
            batch_size=10,
            on_progress=interrupt_after_two_batches,
            # Batch by batch from the first event: the bulk engine's resume is in
            # tests/test_bulk_rebuild.py; batches are how any build catches up after it.
            engine="batches",
        )
    with psycopg.connect(database_url) as conn:
        (building,) = [v for v in versions(conn, "occupancy") if v.state == "building"]
        with conn.cursor() as cur:
            halfway = positions(cur, [building])[building]
        assert live_version(conn, "occupancy") is not None
    assert 0 < halfway < 50
    assert snapshot(database_url) == live
    starts = []
    built = rebuild(
        database_url,
        ["occupancy"],
        SOURCE,
        batch_size=10,
        on_progress=lambda p: starts.append(p.start),
        engine="batches",
    )
    assert built[0].version == building.version, "the rerun resumes the interrupted build"
    assert starts[0] == halfway
    assert snapshot(database_url) == live


def test_runner_killed_mid_batch_ends_with_the_views_of_a_clean_build(
    database_url: str, tmp_path: Path
) -> None:
    store = DeliveryStore(database_url)
    try:
        day = simulate(SimulationOptions(seed=21, attendees=400, out_of_order=0.2))
        bodies = [recorded(d.body, d.delivery_id) for d in day if d.expect == "accepted"]
        for start in range(0, len(bodies), 500):
            store.append(bodies[start : start + 500])
    finally:
        store.close()
    ensure_views(database_url)
    env = {
        "DATABASE_URL": database_url,
        "ROLLCALL_DATA_DIR": str(tmp_path),
        # The store sealed these deliveries under this process's master key.
        "ROLLCALL_MASTER_KEY": os.environ["ROLLCALL_MASTER_KEY"],
        "PATH": "/usr/bin:/bin",
    }
    # Each kill lands while one of the runner's batch transactions is open (the drill's
    # in-batch probe), never after a fixed sleep that might fall before the first batch.
    with psycopg.connect(database_url, autocommit=True) as watch:
        for _ in range(3):
            runner = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "--log-level", "warning", "project"],
                env=env,
            )
            session = f"rollcall runner pid={runner.pid}"
            try:
                wait_until(partial(inside_batch, watch, session), 120)
            finally:
                runner.kill()
                runner.wait()
    with psycopg.connect(database_url) as conn:
        statuses = read_status(conn, SOURCE)
    # Killed mid-way: some view is short of the head (a kill after the end would prove nothing).
    assert any(s.position < s.head for s in statuses), statuses
    Runner(database_url, SOURCE).catch_up()
    survived = snapshot(database_url)
    rebuild(database_url, ["roster", "occupancy", "payments"], SOURCE)
    assert snapshot(database_url) == survived


def test_runner_retries_a_lost_database_at_least_every_second() -> None:
    # Found by the drill's outage scenario: backing off to 5 s, the views resumed up to 5 s
    # after PostgreSQL was back; and a store that could not open was logged as a crash.
    class Waits(threading.Event):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.seconds.append(timeout or 0.0)
            if len(self.seconds) >= 8:
                self.set()
            return self.is_set()

    stop = Waits()
    runner = Runner("postgresql://rollcall@127.0.0.1:1/nothing-listens-here", SOURCE)
    crashes: list[Exception] = []
    runner._record_failure = lambda error, views: crashes.append(error)  # type: ignore[method-assign]
    runner.run(stop)
    assert len(stop.seconds) == 8
    assert max(stop.seconds) <= 1.0
    assert crashes == []


def test_two_runners_never_apply_an_event_twice(database_url: str) -> None:
    store = DeliveryStore(database_url)
    try:
        store.append(
            [recorded(delivery("AttendeeCheckedIn", attendee_id=f"t-{n}")) for n in range(300)]
        )
    finally:
        store.close()
    ensure_views(database_url)
    recorder = view_tracking(database_url)
    # Two runners that both believe they may write (no advisory lock): the tracking check
    # lets exactly one of them apply a given batch.
    with (
        psycopg.connect(database_url, autocommit=True) as a,
        psycopg.connect(database_url, autocommit=True) as b,
    ):
        version = live_version(a, "occupancy")
        assert version is not None
        target = Target(version, 0)
        with a.transaction(), a.cursor() as cur:
            apply_records(cur, recorder, [target], read(SOURCE, cur, 0, 100), strict=False)
        with pytest.raises(StalePosition), b.transaction(), b.cursor() as cur:
            apply_records(cur, recorder, [target], read(SOURCE, cur, 0, 100), strict=False)
    # Two real runners side by side: one holds each view's lock, the other stands by.
    first, second = (
        Runner(database_url, SOURCE, batch_size=50),
        Runner(database_url, SOURCE, batch_size=50),
    )
    with psycopg.connect(database_url, autocommit=True) as locks:
        second._take_locks(locks)
        assert first.catch_up() == 0 and first.held == set()
    assert second.catch_up() >= 300
    with psycopg.connect(database_url) as conn:
        check_ins = conn.execute("SELECT check_ins FROM analytics.occupancy").fetchone()
    assert check_ins == (300,)


def check_ins(database_url: str, first: int, count: int) -> None:
    store = DeliveryStore(database_url)
    try:
        store.append(
            [
                recorded(delivery("AttendeeCheckedIn", attendee_id=f"in-{n}"), f"in-{n}")
                for n in range(first, first + count)
            ]
        )
    finally:
        store.close()


class Interleaving:
    """Holds the runner threads named `first` and `second` at the points of a batch a test
    chooses: after the fold of their first batch, and (first only) before its first commit."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folded = {name: threading.Event() for name in ("first", "second")}
        self.fold_on = {name: threading.Event() for name in ("first", "second")}
        self.written, self.commit = threading.Event(), threading.Event()
        self.first_pid = 0
        self._fold, self._write = fold.fold_records, ViewTracking.record
        monkeypatch.setattr(fold, "fold_records", self.fold)
        monkeypatch.setattr(ViewTracking, "record", lambda tracking, *a: self.write(tracking, *a))

    def fold(self, *args: Any, **kwargs: Any) -> fold.Folded:
        folded = self._fold(*args, **kwargs)
        name = threading.current_thread().name
        if name in self.folded and not self.folded[name].is_set():
            self.folded[name].set()
            assert self.fold_on[name].wait(30)
        return folded

    def write(self, tracking: ViewTracking, cur: psycopg.Cursor[Any], *args: Any) -> list[Target]:
        moved = self._write(tracking, cur, *args)
        if threading.current_thread().name == "first" and not self.written.is_set():
            self.first_pid = cur.connection.info.backend_pid
            self.written.set()
            assert self.commit.wait(30)
        return moved


def test_runners_overlapping_on_a_brand_new_version_never_apply_an_event_twice(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: a version's first batch has no tracking row to lock, so a runner that had
    # lost its lock and one that took it over could both write from position 0: occupancy's
    # counters are additive, and the second batch counted the first one's check-ins again.
    check_ins(database_url, 0, 30)
    ensure_views(database_url)
    steps = Interleaving(monkeypatch)
    errors: dict[str, BaseException] = {}

    def run(runner: Runner) -> None:
        try:
            runner.catch_up()
        except BaseException as error:
            errors[threading.current_thread().name] = error

    runners = {
        name: Runner(database_url, SOURCE, views=["occupancy"]) for name in ("first", "second")
    }
    threads = {
        name: threading.Thread(target=run, name=name, args=(runner,))
        for name, runner in runners.items()
    }
    threads["first"].start()
    assert steps.folded["first"].wait(30)  # first read positions 1-30 of a new version...
    with psycopg.connect(database_url, autocommit=True) as conn:
        # ...then lost its lock (its lock connection died), and the second runner took it.
        conn.execute(
            "SELECT pg_terminate_backend(pid, 30000) FROM pg_locks WHERE locktype = 'advisory' "
            "AND classid = %s AND objid = %s AND granted",
            (LOCK_NAMESPACE, runner_lock("occupancy")),
        )
        check_ins(database_url, 30, 20)
        threads["second"].start()
        assert steps.folded["second"].wait(30)  # second read positions 1-50
        steps.fold_on["first"].set()
        assert steps.written.wait(30)  # first has written, not committed
        steps.fold_on["second"].set()
        # Wait until second's batch waits for first's transaction, then let first commit.
        blocked = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
        wait_until(lambda: conn.execute(blocked, (steps.first_pid,)).fetchone() == (1,), 30)
        steps.commit.set()
    for thread in threads.values():
        thread.join(60)
    Runner(database_url, SOURCE, views=["occupancy"]).catch_up()
    with psycopg.connect(database_url) as conn:
        counted = conn.execute(
            "SELECT check_ins, inside_now FROM analytics.occupancy WHERE event = 'default'"
        ).fetchone()
    assert counted == (50, 50)  # each check-in once
    assert errors == {}
    # The runner that lost its lock notices before its next batch, and lets the view go.
    assert runners["first"].held == set()
    assert runners["second"].held == {"occupancy"}


def test_poison_is_dead_lettered_live_and_strict_in_a_rebuild(database_url: str) -> None:
    bad = delivery("AttendeePaymentConfirmed", attendee_id="p-1", payment=None)
    bad = bad.replace(
        b'"firstName": "Ola"',
        b'"firstName": "Ola", "payment": {"amount": "abc", "currency": "PLN"}',
    )
    good = delivery("AttendeePaymentConfirmed", attendee_id="p-2").replace(
        b'"firstName": "Ola"',
        b'"firstName": "Ola", "payment": {"amount": "10.50", "currency": "pln"}',
    )
    store = DeliveryStore(database_url)
    try:
        store.append([recorded(bad), recorded(good)])
    finally:
        store.close()
    Runner(database_url, SOURCE).catch_up()
    with psycopg.connect(database_url) as conn:
        statuses = {s.view: s for s in read_status(conn, SOURCE)}
        letters = conn.execute("SELECT view, error FROM rollcall.dead_letters").fetchall()
        ledger_rows = conn.execute(
            "SELECT attendee_id, amount, currency FROM analytics.payments"
        ).fetchall()
        paid = conn.execute(
            "SELECT attendee_id, paid, amount FROM analytics.roster ORDER BY 1"
        ).fetchall()
    assert statuses["payments"].dead_letters == 1 and statuses["payments"].state == "live"
    assert letters[0][0] == "payments" and "not a decimal" in letters[0][1]
    assert ledger_rows == [("p-2", Decimal("10.50"), "PLN")]
    assert paid == [("p-1", False, None), ("p-2", True, Decimal("10.50"))]
    with pytest.raises(PoisonError, match="not a decimal"):
        rebuild(database_url, ["payments"], SOURCE)
    with psycopg.connect(database_url) as conn:
        stopped = {s.view: s for s in read_status(conn, SOURCE)}["payments"]
    assert stopped.rebuilding and "not a decimal" in (stopped.rebuilding.error or "")
    assert stopped.state == "rebuilding" and stopped.last_error is None, "live is not failed"
    rebuild(database_url, ["payments"], SOURCE, skip_poison=True)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM analytics.payments").fetchone() == (1,)
        assert {s.view: s for s in read_status(conn, SOURCE)}["payments"].rebuilding is None


def _payment(attendee_id: str, at: str, amount: str, currency: str, delivery_id: str) -> bytes:
    payment = {"amount": amount, "currency": currency, "method": "payu", "reference": attendee_id}
    return json.dumps(
        {
            "event": "AttendeePaymentConfirmed",
            "id": delivery_id,
            "occurredAt": f"2026-05-14T{at}Z",
            "attendee": {"id": attendee_id, "payment": payment},
        }
    ).encode()


def _roster_against_ledger(database_url: str) -> list[tuple[object, ...]]:
    """Per attendee: the roster's payment, and the ledger's latest entry for them."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT r.attendee_id, r.paid, r.amount, r.currency, r.payment_method, r.paid_at, "
            "l.attendee_id IS NOT NULL, l.amount, l.currency, l.method, l.paid_at "
            "FROM analytics.roster r LEFT JOIN LATERAL (SELECT * FROM analytics.payments p "
            "WHERE p.event = r.event AND p.attendee_id = r.attendee_id "
            "ORDER BY p.paid_at DESC LIMIT 1) l ON true ORDER BY r.attendee_id"
        ).fetchall()


def test_roster_and_ledger_agree_after_an_unusable_payment(database_url: str) -> None:
    # The rule: a confirmation the ledger cannot record is no payment in either view.
    deliveries = [
        _payment("a-1", "09:00:00", "349.00", "PLN", "pay-1"),
        _payment("a-1", "10:00:00", "a lot", "PLN", "pay-2"),  # later, unusable
        _payment("a-2", "09:30:00", "50.00", "EURO", "pay-3"),  # only an unusable one
    ]
    store = DeliveryStore(database_url)
    try:
        store.append([recorded(d, f"d-{n}") for n, d in enumerate(deliveries)])
    finally:
        store.close()
    Runner(database_url, SOURCE).catch_up()
    at_nine = datetime(2026, 5, 14, 9, tzinfo=UTC)
    paid = (Decimal("349.00"), "PLN", "payu", at_nine)
    expected = [
        ("a-1", True, *paid, True, *paid),
        ("a-2", False, None, None, None, None, False, None, None, None, None),
    ]
    assert _roster_against_ledger(database_url) == expected
    rebuild(database_url, ["roster", "payments"], SOURCE, skip_poison=True)
    assert _roster_against_ledger(database_url) == expected, "and so does a rebuild"


def test_replay_appends_what_now_parses_once(database_url: str) -> None:
    readable = delivery("AttendeeRegistered", attendee_id="late-reader", delivery_id="q-1")
    still_bad = b'{"event": "AttendeeTeleported", "attendee": {"id": "x"}}'
    old = recorded(readable, "q-1")
    quarantined = [
        type(old)(**{**old.__dict__, "quarantine_reason": "unknown event type (an older parser)"}),
        recorded(still_bad),
    ]
    quarantined[1] = type(old)(
        **{**quarantined[1].__dict__, "quarantine_reason": "unknown event type"}
    )
    store = DeliveryStore(database_url)
    try:
        store.append(quarantined)
        first = replay_quarantined(store)
        second = replay_quarantined(store)
    finally:
        store.close()
    assert (first.quarantined, first.readable_now, first.appended) == (2, 1, 1)
    assert (second.appended, second.already_replayed) == (0, 1)
    rows = stored_rows(database_url)
    assert len(rows) == 3
    assert str(rows[-1]["replay_of"]) == str(rows[0]["key"])
    Runner(database_url, SOURCE).catch_up()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT attendee_id FROM analytics.roster").fetchall() == [
            ("late-reader",)
        ]


def test_as_of_builds_the_views_as_they_stood(database_url: str) -> None:
    store = DeliveryStore(database_url)
    try:
        store.append([recorded(delivery("AttendeeCheckedIn", attendee_id="early"))])
        cut = datetime.now(UTC)
        time.sleep(0.01)
        store.append([recorded(delivery("AttendeeCheckedIn", attendee_id="late"))])
    finally:
        store.close()
    Runner(database_url, SOURCE).catch_up()
    schema = build_as_of(database_url, ["occupancy"], SOURCE, cut)
    with psycopg.connect(database_url) as conn:
        then = conn.execute(f'SELECT attendee_id FROM "{schema}".presence').fetchall()
        now = conn.execute("SELECT attendee_id FROM analytics.presence ORDER BY 1").fetchall()
    assert then == [("early",)]
    assert now == [("early",), ("late",)]


def test_as_of_cuts_by_occurrence_time_and_its_schemas_can_be_listed_and_dropped(
    database_url: str,
) -> None:
    # Received first but occurred after the cut: left out. Received last (JTE retried it late)
    # but occurred before the cut: in. No occurrence time: its receipt time counts.
    store = DeliveryStore(database_url)
    try:
        store.append(
            [
                recorded(delivery("AttendeeCheckedIn", "after", occurredAt="2026-05-14T12:30:00Z")),
                recorded(delivery("AttendeeCheckedIn", "untimed")),
                recorded(
                    delivery("AttendeeCheckedIn", "before", occurredAt="2026-05-14T11:59:59Z")
                ),
            ]
        )
    finally:
        store.close()
    Runner(database_url, SOURCE).catch_up()
    cut = datetime(2026, 5, 14, 12, tzinfo=UTC)
    schema = build_as_of(database_url, ["occupancy"], SOURCE, cut)
    with psycopg.connect(database_url) as conn:
        then = conn.execute(f'SELECT attendee_id FROM "{schema}".presence').fetchall()
        assert then == [("before",)]
        assert as_of_builds(conn) == [AsOfBuild(schema, cut, ["occupancy"])]
    assert drop_as_of(database_url, "analytics_as_of_20990101t000000z") is None
    assert drop_as_of(database_url, schema) == AsOfBuild(schema, cut, ["occupancy"])
    with psycopg.connect(database_url) as conn:
        assert as_of_builds(conn) == []
        gone = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        assert gone.fetchone() is None
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'rollcall_views' "
            "AND tablename LIKE 'presence%'"
        ).fetchone()
        assert tables == (1,)  # the live version's only


async def test_status_endpoint_and_readiness(
    start_service: Callable[..., RunningService], database_url: str
) -> None:
    service = start_service()
    async with httpx.AsyncClient(base_url=service.url) as client:
        await client.post("/webhooks/jte", content=delivery(), headers=token_headers())
        wait_until_caught_up(database_url)
        assert (await client.get("/v1/projections")).status_code == 401
        answer = await client.get("/v1/projections", headers=bearer(api_token(database_url)))
        body = answer.json()
        assert {v["view"] for v in body["views"]} == {
            "roster",
            "occupancy",
            "payments",
            "occurrences",
            "roster_history",
        }
        for view in body["views"]:
            assert view["state"] == "live" and view["lag_events"] == 0 and view["position"] >= 1
        assert (await client.get("/readyz")).status_code == 200
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE rollcall.view_versions SET failed_at = now(), last_error = 'boom' "
                "WHERE view = 'roster' AND state = 'live'"
            )
        # A failed view is for status and metrics to report; readiness is about taking
        # deliveries, which every replica still does (the failure is in the shared database).
        answer = await client.get("/readyz")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "ready", "database": "ok"}
        accepted = await client.post(
            "/webhooks/jte", content=delivery(attendee_id="a-2"), headers=token_headers()
        )
        assert accepted.json()["status"] == "accepted"
        views = (
            await client.get("/v1/projections", headers=bearer(api_token(database_url)))
        ).json()["views"]
        roster = next(v for v in views if v["view"] == "roster")
        assert roster["state"] == "failed" and roster["last_error"] == "boom"
        metrics = (await client.get("/metrics")).text
        assert 'rollcall_projection_failed{view="roster"} 1.0' in metrics


def test_fields_keep_their_exact_numbers_when_a_row_is_rewritten(database_url: str) -> None:
    paid = (
        b'{"event": "AttendeePaymentConfirmed", "id": "p-1", "occurredAt": "2026-05-14T09:00:00Z",'
        b' "attendee": {"id": "a-1", "payment": {"amount": 499.00, "currency": "PLN"}}}'
    )
    later = delivery("AttendeeCheckedIn", attendee_id="a-1", occurredAt="2026-05-14T10:00:00Z")
    store = DeliveryStore(database_url)
    try:
        store.append([recorded(paid, "p-1")])
        Runner(database_url, SOURCE).catch_up()  # one batch writes the row...
        store.append([recorded(later)])
        Runner(database_url, SOURCE).catch_up()  # ...and the next one reads it back and rewrites it
    finally:
        store.close()
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT fields::text, amount FROM analytics.roster WHERE attendee_id = 'a-1'"
        ).fetchone()
    assert row is not None
    assert '"amount": 499.00' in row[0]
    assert row[1] == Decimal("499.00")


def test_a_batch_is_bounded_by_the_bytes_it_reads(database_url: str) -> None:
    # Regression (found by `scripts/drill hostile` beyond its full size): batches were bounded
    # by rows alone, and a rebuild over 300 verified ~900 KB bodies peaked at 1.2 GB.
    pad = "x" * 100_000
    store = DeliveryStore(database_url)
    try:
        store.append([recorded(delivery(attendee_id=f"big-{n}", pad=pad)) for n in range(5)])
    finally:
        store.close()
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        # Each state holds its body in base64 (~133 KB): two fit under 250 KB, and one always
        # comes however large it is.
        assert [r.position for r in read(SOURCE, cur, 0, 100, budget=250_000)] == [1, 2]
        assert [r.position for r in read(SOURCE, cur, 2, 100, budget=1)] == [3]
        walked, after = [], 0
        while batch := read(SOURCE, cur, after, 100, budget=250_000):
            walked += [r.position for r in batch]
            after = batch[-1].position
        assert walked == [1, 2, 3, 4, 5]
        assert [r.position for r in read(SOURCE, cur, 0, 100)] == [1, 2, 3, 4, 5]
