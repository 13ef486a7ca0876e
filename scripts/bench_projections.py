"""Projections benchmark: rebuild throughput and memory at growing sizes, the eventsourcing
ProjectionRunner baseline, and live lag under steady and flat-out intake, all in one run.

    .venv/bin/python scripts/bench_projections.py [--events 1000000]

Uses DATABASE_URL's server if set, else an embedded PostgreSQL. Appends simulator deliveries
straight into the event store (several JTE events of 20,000 attendees each), then at 25%, 50%
and 100% of --events runs `rollcall rebuild all` as a separate process and reports events/s
and its peak RSS (the rebuild and its workers together). The baseline builds the roster from
the first 50,000 events with the library's own ProjectionRunner (one transaction per event).
Finally a fresh `rollcall serve` takes 1,000 deliveries/s, then as many as it can answer
(--max-rate asked), while the lag between each acknowledgement and the views having applied
it is sampled. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import Projection, ProjectionRunner

from domain.events import attendee_event
from domain.interpret import Interpreted, interpret
from domain.roster import RosterEntry, apply
from service.config import EventConfig
from service.eventstore import keys
from service.eventstore.database import (
    drop_database,
    eventsourcing_env,
    new_database,
    server,
)
from service.eventstore.source import SOURCE
from service.eventstore.store import DeliveryRecorded, DeliveryStore
from service.http.intake import delivery_record
from service.jte.signing import sign
from service.jte.simulator import SignedDelivery, SimulationOptions, sign_all, simulate

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-projections-secret"  # noqa: S105 - a throwaway test secret
ATTENDEES_PER_EVENT = 20_000
BASELINE_EVENTS = 50_000
_FLAT_OUT_SECONDS = 10


def main() -> int:
    # This process seeds the store and starts rollcall processes: they must share one master key.
    os.environ.setdefault(keys.MASTER_KEY_ENV, keys.generate_master_key())
    args = _arguments()
    work = Path(tempfile.mkdtemp(prefix="rollcall-bench-"))
    try:
        with server(os.environ.get("DATABASE_URL") or None, work / "data") as server_url:
            return _run(args, work, server_url)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path, server_url: str) -> int:
    if args.lag_only:
        lags = _live_lag(server_url, work, args.lag_seconds, args.rate)
        _print_lag(lags, args)
        if args.max_rate:
            flat_out = _live_lag(server_url, work, _FLAT_OUT_SECONDS, args.max_rate)
            _print_lag(flat_out, args, args.max_rate, _FLAT_OUT_SECONDS)
        return 0
    database_url = new_database(server_url, "bench_projections")
    print(f"appending {args.events:,} simulator deliveries, rebuilding at each stage\n")
    stages = [args.events // 4, args.events // 2, args.events]
    rebuilds = []
    appended, seed = 0, 1
    for target in stages:
        appended, seed = _append_until(database_url, appended, target, seed)
        rebuilds.append(_rebuild(database_url, work))
        print(
            f"  rebuilt {rebuilds[-1][0]:,} events: {rebuilds[-1][1]:,.0f} events/s, "
            f"peak RSS {rebuilds[-1][2]:.0f} MB",
            flush=True,
        )
    baseline = _baseline(database_url, min(BASELINE_EVENTS, appended))
    print(f"  baseline ProjectionRunner: {baseline:,.0f} events/s", flush=True)
    lag = _live_lag(server_url, work, args.lag_seconds, args.rate)
    _print_report(rebuilds, baseline, lag, args)
    if args.max_rate:
        # As fast as 32 keep-alive senders get answers: the views following intake at its
        # maximum.
        flat_out = _live_lag(server_url, work, _FLAT_OUT_SECONDS, args.max_rate)
        _print_lag(flat_out, args, args.max_rate, _FLAT_OUT_SECONDS)
    drop_database(server_url, database_url)
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=1000, help="deliveries/s for the lag test")
    parser.add_argument("--lag-seconds", type=int, default=20, help="length of the lag test")
    parser.add_argument("--lag-only", action="store_true", help="only the live-lag test")
    parser.add_argument(
        "--max-rate",
        type=int,
        default=8000,
        help="deliveries/s asked in the flat-out lag test (0: none)",
    )
    return parser.parse_args()


def _append_until(database_url: str, appended: int, target: int, seed: int) -> tuple[int, int]:
    """Append simulated conferences (in batches of 1,000) until `target` deliveries are stored;
    the count and the next conference's seed."""
    store = DeliveryStore(database_url)
    event = EventConfig(slug="default", secrets=(SECRET,))
    try:
        while appended < target:
            slug = f"conference-{seed}"
            day = simulate(SimulationOptions(seed=seed, attendees=ATTENDEES_PER_EVENT))
            conference = EventConfig(slug=slug, secrets=event.secrets)
            records = [_record(conference, d.body) for d in day if d.expect == "accepted"]
            records = records[: target - appended]
            for start in range(0, len(records), 1000):
                positions = store.append(records[start : start + 1000])
                appended += sum(p is not None for p in positions)
            seed += 1
            print(f"  appended {appended:,}", flush=True)
    finally:
        store.close()
    return appended, seed


def _record(conference: EventConfig, body: bytes) -> DeliveryRecorded:
    headers = {k: v.encode("latin-1") for k, v in sign(conference, body, now=time.time()).items()}
    return delivery_record(conference, headers, body, "hmac-sha256")


def _rebuild(database_url: str, work: Path) -> tuple[int, float, float]:
    """Run `rollcall rebuild all` in its own process; events, events/s and its peak RSS (MB)."""
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        events = SOURCE.head(cur)
    env = {**os.environ, "DATABASE_URL": database_url, "ROLLCALL_DATA_DIR": str(work / "cli")}
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    errors = (work / "rebuild.err").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--log-level", "warning", "rebuild", "all"],
        env=env,
        cwd=ROOT,
        stderr=errors,
    )
    # Sampled while it runs: the child's rusage would count the memory it shared with this
    # (large) process between fork and exec. The rebuild works in worker processes too: the
    # peak is the highest sum of the resident sets of it and its workers at one sample.
    peak_kb = 0
    while process.poll() is None:
        peak_kb = max(peak_kb, sum(_resident_kb(pid) for pid in _tree(process.pid)))
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    if process.returncode != 0:
        errors.seek(0)
        raise RuntimeError(f"rollcall rebuild failed:\n{errors.read()[-4000:]}")
    errors.close()
    # The CPU the rebuild and its workers used (PostgreSQL's not included): steadier than
    # events/s on a loaded machine.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(
        f"    rebuild CPU (it and its workers): {cpu:.1f} s, {1e6 * cpu / max(1, events):.0f} µs "
        f"per event; wall {elapsed:.1f} s; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return events, events / elapsed, peak_kb / 1024


def _tree(root: int) -> list[int]:
    """A process and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _resident_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


# --- The baseline: eventsourcing's ProjectionRunner, one transaction per event ----------------


class BaselineRosterView(PostgresTrackingRecorder):
    """The roster as a tracking recorder, written the library's way: one event, one commit."""

    def create_table(self) -> None:
        super().create_table()
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                "CREATE TABLE IF NOT EXISTS rollcall.baseline_roster "
                "(slug text, attendee_id text, state bytea, PRIMARY KEY (slug, attendee_id))"
            )

    def apply(self, delivery: DeliveryRecorded, tracking: Tracking) -> None:

        with self.datastore.transaction(commit=True) as curs:
            reading = interpret(delivery.body) if delivery.quarantine_reason is None else None
            if isinstance(reading, Interpreted):
                event = attendee_event(
                    delivery.slug,
                    tracking.notification_id,
                    delivery.originator_id,
                    delivery.timestamp,
                    reading,
                )
                curs.execute(
                    "SELECT state FROM rollcall.baseline_roster "
                    "WHERE slug = %s AND attendee_id = %s",
                    (event.slug, event.attendee_id),
                )
                row = curs.fetchone()
                entry = msgspec.json.decode(row["state"], type=RosterEntry) if row else None
                entry = apply(entry, event)
                curs.execute(
                    "INSERT INTO rollcall.baseline_roster VALUES (%s, %s, %s) "
                    "ON CONFLICT (slug, attendee_id) DO UPDATE SET state = excluded.state",
                    (event.slug, event.attendee_id, msgspec.json.encode(entry)),
                )
            self._insert_tracking(curs, tracking)


class BaselineRoster(Projection[BaselineRosterView]):
    name = "baseline_roster"

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.apply(domain_event, tracking)


def _baseline(database_url: str, events: int) -> float:
    """Events/s of the library's ProjectionRunner building the roster from the first events."""
    from service.eventstore.store import Deliveries

    env = eventsourcing_env(database_url, SCHEMA="rollcall") | {"CREATE_TABLE": "y"}
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT notification_id FROM rollcall.deliveries_events ORDER BY notification_id "
            "OFFSET %s LIMIT 1",
            (events - 1,),
        ).fetchone()
    assert row is not None
    last = int(row[0])
    started = time.monotonic()
    runner: ProjectionRunner[Deliveries, BaselineRosterView] = ProjectionRunner(
        application_class=Deliveries,
        projection_class=BaselineRoster,
        view_class=BaselineRosterView,
        env=env,
    )
    deadline = started + 3600
    with runner:
        # The library's wait polls with a backoff of up to 0.8 s, which would add as much to
        # the baseline's time (so the same 40.06 s in two runs): short waits poll every 0.1 s.
        while True:
            try:
                runner.wait(last, timeout=0.01)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
    return events / (time.monotonic() - started)


# --- Live lag under steady intake -----------------------------------------------------------


def _live_lag(server_url: str, work: Path, seconds: int, rate: int) -> list[float]:
    """Lags (seconds) between acknowledging a delivery and all views having applied it."""
    database_url = new_database(server_url, "bench_lag")
    port = 8331
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ROLLCALL_SECRET": SECRET,
        "ROLLCALL_DATA_DIR": str(work / "lag"),
    }
    command = ["-m", "service.cli", "--log-level", "warning", "serve", "--port", str(port)]
    server = subprocess.Popen([sys.executable, *command], env=env, cwd=ROOT)
    try:
        asyncio.run(_wait_ready(port))
        deliveries = _paced_deliveries(seconds * rate)
        acknowledged: list[tuple[int, float]] = []
        applied: list[tuple[float, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_positions, args=(database_url, applied, stop))
        sampler.start()
        asyncio.run(_send_paced(f"http://127.0.0.1:{port}", deliveries, rate, acknowledged))
        time.sleep(2)
        stop.set()
        sampler.join()
        return _lags(acknowledged, applied)
    finally:
        server.terminate()
        server.wait(timeout=30)
        drop_database(server_url, database_url)


def _paced_deliveries(count: int) -> list[SignedDelivery]:
    event = EventConfig(slug="default", secrets=(SECRET,))
    day = simulate(SimulationOptions(seed=99, attendees=max(10, count // 4)))
    accepted = [d for d in day if d.expect == "accepted"][:count]
    return sign_all(accepted, event, now=time.time())


async def _send_paced(
    url: str, deliveries: list[SignedDelivery], rate: int, acknowledged: list[tuple[int, float]]
) -> None:
    """Send on a fixed schedule (delivery i at i/rate s) from 32 senders with one keep-alive
    connection each, recording (position, time acknowledged). Requests are encoded up front and
    written as raw HTTP/1.1: httpx spent about 2.5 ms of CPU a request here, so the sender, not
    rollcall, capped the rate (263-361/s reached of 1,000/s asked)."""
    host, port = url.removeprefix("http://").split(":")
    requests = [_raw_request(delivery) for delivery in deliveries]
    started = time.monotonic()
    schedule = iter(enumerate(requests))

    async def sender() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for index, request in schedule:
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(request)
                body = await _read_answer(reader)
                if body.get("status") == "accepted":
                    acknowledged.append((int(body["position"]), time.monotonic()))
        finally:
            writer.close()

    await asyncio.gather(*(sender() for _ in range(32)))
    elapsed = time.monotonic() - started
    print(
        f"  sent {len(deliveries):,} deliveries in {elapsed:.1f} s "
        f"({len(deliveries) / elapsed:,.0f}/s, asked {rate}/s)",
        flush=True,
    )


def _raw_request(delivery: SignedDelivery) -> bytes:
    body = delivery.body.encode()
    head = [
        "POST /webhooks/jte HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in delivery.headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


async def _read_answer(reader: asyncio.StreamReader) -> dict[str, Any]:
    """One keep-alive answer's JSON body (rollcall always sends Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    answer: dict[str, Any] = msgspec.json.decode(await reader.readexactly(length))
    return answer


def _sample_positions(
    database_url: str, applied: list[tuple[float, int]], stop: threading.Event
) -> None:
    """Every 10 ms: the position all live views have reached."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        while not stop.is_set():
            row = (
                conn.execute(
                    "SELECT min(t.notification_id), count(*), "
                    "(SELECT count(*) FROM rollcall.view_versions WHERE state = 'live') "
                    "FROM rollcall.projection_tracking t JOIN rollcall.view_versions v "
                    "ON t.application_name = v.view || '_v' || v.version WHERE v.state = 'live'"
                ).fetchone()
                if _has_views(conn)
                else None
            )
            # Every live view tracked (four since the occurrences view), not a fixed count.
            if row and row[1] and row[1] == row[2] and row[0] is not None:
                applied.append((time.monotonic(), int(row[0])))
            stop.wait(0.01)


def _has_views(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('rollcall.projection_tracking')").fetchone()
    return bool(row and row[0])


def _lags(acknowledged: list[tuple[int, float]], applied: list[tuple[float, int]]) -> list[float]:
    """For each acknowledgement, the first sample at or after it that covers its position."""
    times = [t for t, _ in applied]
    reached = [p for _, p in applied]  # never decreases: views only move forward
    lags = []
    for position, acked_at in acknowledged:
        index = max(bisect.bisect_left(reached, position), bisect.bisect_left(times, acked_at))
        if index < len(applied):
            lags.append(applied[index][0] - acked_at)
    return lags


async def _wait_ready(port: int) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("rollcall serve did not become ready")


def _print_report(
    rebuilds: list[tuple[int, float, float]],
    baseline: float,
    lags: list[float],
    args: argparse.Namespace,
) -> None:
    print()
    print(f"{'rebuild of all three views':34}{'events':>12}{'events/s':>12}{'peak RSS MB':>14}")
    for events, rate, rss in rebuilds:
        print(f"{'':34}{events:>12,}{rate:>12,.0f}{rss:>14.0f}")
    events, final = rebuilds[-1][0], rebuilds[-1][1]
    print(
        f"\nbaseline: ProjectionRunner, roster only, one transaction per event: {baseline:,.0f}/s"
    )
    print(f"ratio rebuild(all three)/baseline(roster): {final / baseline:.1f}x   (target >= 25x)")
    print(f"rebuild of {events:,} events: {events / final:.1f} s   (target <= 25 s for 1M)")
    _print_lag(lags, args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"benchmark process peak RSS: {peak:.0f} MB")


def _print_lag(
    lags: list[float], args: argparse.Namespace, rate: int | None = None, seconds: int = 0
) -> None:
    if not lags:
        print("live lag: no delivery was seen applied")
        return
    q = statistics.quantiles(lags, n=100)
    print(
        f"live lag at {rate or args.rate}/s asked for {seconds or args.lag_seconds} s: "
        f"p50 {1000 * q[49]:.0f} ms, p99 {1000 * q[98]:.0f} ms, max {1000 * max(lags):.0f} ms"
        f"   (target p99 <= 100 ms at 1,000/s; {len(lags):,} deliveries)"
    )


if __name__ == "__main__":
    sys.exit(main())
