"""Analyst-query benchmark: roster pages, occupancy now, the day's timeline and the CSV exports
over real HTTP against `rollcall serve`, on 100,000 attendees and 300,000 deliveries.

    .venv/bin/python scripts/bench_queries.py [--attendees 100000] [--events 300000] [--keep]

Uses DATABASE_URL's server if set, else an embedded PostgreSQL, and a fresh database. Seeds one
JTE event ("default") straight into the event store: simulator days of 5,000 attendees each
(attendee ids made distinct per day, merged in occurrence order), keeping every registration,
import, update, deletion and payment, every attendee's first check-in, and whole check-in and
check-out sequences of a random share of attendees, until --events deliveries. Builds the
views with Runner.catch_up(), then VACUUM ANALYZE (the state autovacuum reaches soon after).
Then starts `rollcall serve`, issues a read token and measures, with one keep-alive client
sending one request at a time: roster pages (50 rows, one filter each, walking a few pages
with the cursor), occupancy now, the day's timeline in 5-minute buckets, and the roster and
payments CSV exports (time, rows, and the service's RSS sampled every 50 ms while streaming).

The timed client is the standard library's http.client: httpx spent 1.1 ms of CPU a request
here against its 0.3 ms, time the figures would count as the service's. One first page is also
measured through httpx, alternating with it, and printed beside it.

Prints each figure beside its target. Exits 0 whether targets are met or not (a benchmark
reports); 1 when a request fails or an answer has the wrong rows. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx
import msgspec
import psycopg

from projections.runner import Runner
from service.config import EventConfig
from service.eventstore import keys
from service.eventstore.database import drop_database, new_database, server
from service.eventstore.source import SOURCE
from service.eventstore.store import DeliveryRecorded, DeliveryStore
from service.http.intake import delivery_record
from service.jte.signing import sign
from service.jte.simulator import SimulatedDelivery, SimulationOptions, simulate
from service.tokens import issue

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-queries-secret"  # noqa: S105 - a throwaway test secret
SLUG = "default"
DAY = "2026-05-14"  # the simulator's conference day (UTC)
ATTENDEES_PER_DAY = 5_000  # simulate() grows faster than linearly: several small days are quick
APPEND_BATCH = 1000
CHECKS = ("AttendeeCheckedIn", "AttendeeCheckedOut")
PAGE = 50

ROSTER_TARGET_MS = 5.0
OCCUPANCY_TARGET_MS = 2.0
TIMELINE_TARGET_MS = 50.0
CSV_TARGET_S = 2.0
FLAT_MB = 32  # what "flat memory" allows the service's RSS to grow while it streams an export
ROSTER_OVERALL = "roster page, all filters"
OCCUPANCY = "occupancy now"
TIMELINE = "timeline, one day in 5-minute buckets"


class BenchFailure(Exception):
    """A request failed or answered with the wrong rows: the run is not valid."""


class _Envelope(msgspec.Struct, rename="camel"):
    occurred_at: str


@dataclass
class Seeded:
    deliveries: int
    attendees: int
    by_type: Counter[str]
    simulate_s: float
    append_s: float
    project_s: float
    analyze_s: float


@dataclass
class Measurement:
    """Latencies (ms) of one kind of request."""

    name: str
    target_ms: float | None
    matching: int | None = None
    samples: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return _percentile(self.samples, 50)

    @property
    def p99(self) -> float:
        return _percentile(self.samples, 99)

    @property
    def met(self) -> bool:
        return self.target_ms is None or self.p99 <= self.target_ms


@dataclass
class Export:
    name: str
    rows: int
    expected: int
    megabytes: float
    seconds: float
    first_byte_ms: float
    rss_before_mb: float
    rss_peak_mb: float
    rss_after_mb: float
    hwm_before_mb: float
    hwm_after_mb: float
    target_s: float | None

    @property
    def met(self) -> bool:
        return self.target_s is None or self.seconds <= self.target_s


def main() -> int:
    args = _arguments()
    if not args.reuse:  # a kept database's key comes from the ROLLCALL_DATA_DIR given
        # This process seeds the store and starts rollcall processes: they must share one key.
        os.environ.setdefault(keys.MASTER_KEY_ENV, keys.generate_master_key())
    work = Path(tempfile.mkdtemp(prefix="rollcall-bench-"))
    configured = os.environ.get("DATABASE_URL") or None
    # Seeding (which seals personal data) and the service must use one master key.
    os.environ.setdefault("ROLLCALL_DATA_DIR", str(work / "rollcall"))
    try:
        if args.reuse:
            return _run(args, work, args.reuse)
        with server(configured, work / "data") as server_url:
            database_url = new_database(server_url, "bench_queries")
            try:
                return _run(args, work, database_url)
            finally:
                if args.keep and configured:
                    print(
                        f"\nkept the database: {database_url} (its master key is in "
                        f"{_keep_key()}: give that as ROLLCALL_DATA_DIR with --reuse)"
                    )
                else:
                    drop_database(server_url, database_url)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _keep_key() -> Path:
    """A data directory that outlives the run (the scratch one is removed), holding the master
    key the kept database's personal data is sealed under."""
    kept = Path(tempfile.mkdtemp(prefix="rollcall-bench-key-"))
    fd = os.open(kept / keys.MASTER_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(os.environ[keys.MASTER_KEY_ENV] + "\n")
    return kept


def _run(args: argparse.Namespace, work: Path, database_url: str) -> int:
    try:
        seeded = None if args.reuse else _seed(database_url, args)
        facts = _facts(database_url, args.surname)
        if seeded is not None:
            _print_seeding(seeded, facts)
        serving = _start_server(database_url, work, args.port)
        try:
            token = _read_token(database_url)
            measurements, exports = _measure(args, serving.pid, token, facts)
        finally:
            _stop_server(serving)
        _print_report(measurements, exports, facts)
        return 0
    except BenchFailure as failure:
        print(f"\nbench_queries: FAILED: {failure}", file=sys.stderr)
        _print_log_tail(work / "serve.log")
        return 1


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attendees", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=300_000, help="deliveries to seed")
    parser.add_argument("--requests", type=int, default=500, help="measured requests per kind")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured requests per kind")
    parser.add_argument("--pages", type=int, default=5, help="roster pages walked per filter")
    parser.add_argument("--csv-runs", type=int, default=3, help="roster CSV exports to time")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--surname", default="Nowak", help="the roster search (q=) for a common surname"
    )
    parser.add_argument("--port", type=int, default=8341)
    parser.add_argument(
        "--reuse",
        metavar="URL",
        help="measure a database a --keep run seeded (its ROLLCALL_DATA_DIR set), no seeding",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the database and print its URL, for EXPLAIN (with DATABASE_URL only)",
    )
    return parser.parse_args()


# --- Seeding: simulator days into the event store, then the views ----------------------------


def _seed(database_url: str, args: argparse.Namespace) -> Seeded:
    started = time.monotonic()
    bodies, by_type = _deliveries(args.attendees, args.events, args.seed)
    simulated = time.monotonic()
    print(f"simulated and selected {len(bodies):,} deliveries in {simulated - started:.1f} s")
    event = EventConfig(slug=SLUG, secrets=(SECRET,))
    store = DeliveryStore(database_url)
    appended = 0
    try:
        for start in range(0, len(bodies), APPEND_BATCH):
            batch = [_record(event, body) for body in bodies[start : start + APPEND_BATCH]]
            appended += sum(p is not None for p in store.append(batch))
    finally:
        store.close()
    if appended != len(bodies):
        raise BenchFailure(f"{len(bodies) - appended} seeded deliveries were taken as duplicates")
    stored = time.monotonic()
    print(f"appended {appended:,} deliveries in {stored - simulated:.1f} s", flush=True)
    projected = Runner(database_url, SOURCE, batch_size=5000).catch_up()
    if projected != appended:
        raise BenchFailure(f"the views applied {projected:,} of {appended:,} deliveries")
    built = time.monotonic()
    print(f"projected {projected:,} deliveries in {built - stored:.1f} s", flush=True)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    analyzed = time.monotonic()
    return Seeded(
        deliveries=appended,
        attendees=args.attendees,
        by_type=by_type,
        simulate_s=simulated - started,
        append_s=stored - simulated,
        project_s=built - stored,
        analyze_s=analyzed - built,
    )


def _deliveries(attendees: int, events: int, seed: int) -> tuple[list[bytes], Counter[str]]:
    """`events` delivery bodies about `attendees` attendees, in occurrence order.

    Several simulated days (5,000 attendees each, attendee ids made distinct per day) merged
    by occurrence time. Kept: everything but check-ins and check-outs, and each attendee's first
    check-in; then whole remaining check-in/out sequences of attendees in random order, while
    they fit in `events`."""
    days = math.ceil(attendees / ATTENDEES_PER_DAY)
    width = len(str(days - 1))
    decode = msgspec.json.Decoder(_Envelope).decode
    merged: list[tuple[str, int, int, SimulatedDelivery, bytes, str]] = []
    for day in range(days):
        size = min(ATTENDEES_PER_DAY, attendees - day * ATTENDEES_PER_DAY)
        simulated = simulate(SimulationOptions(seed=seed * 1000 + day, attendees=size))
        prefix = f'"id":"a-{day:0{width}d}'.encode()
        for index, delivery in enumerate(simulated):
            if delivery.expect != "accepted" or delivery.attendee_id is None:
                continue
            body = delivery.body
            if body.count(b'"id":"a-') != 1:
                raise BenchFailure(f"unexpected simulator body: {body[:200]!r}")
            body = body.replace(b'"id":"a-', prefix)
            attendee_id = f"a-{day:0{width}d}{delivery.attendee_id[2:]}"
            at = decode(body).occurred_at
            merged.append((at, day, index, delivery, body, attendee_id))
    merged.sort(key=lambda item: item[:3])
    keep = [True] * len(merged)
    first_in: set[str] = set()
    extras: dict[str, list[int]] = defaultdict(list)
    for position, (_, _, _, delivery, _, attendee_id) in enumerate(merged):
        if delivery.event_type not in CHECKS:
            continue
        if delivery.event_type == "AttendeeCheckedIn" and attendee_id not in first_in:
            first_in.add(attendee_id)
            continue
        extras[attendee_id].append(position)
        keep[position] = False
    budget = events - sum(keep)
    if budget < 0:
        raise BenchFailure(
            f"{attendees:,} attendees need at least {sum(keep):,} deliveries (--events)"
        )
    order = sorted(extras)
    random.Random(seed).shuffle(order)
    for attendee_id in order:
        if len(extras[attendee_id]) <= budget:
            budget -= len(extras[attendee_id])
            for position in extras[attendee_id]:
                keep[position] = True
    kept = [item for item, wanted in zip(merged, keep, strict=True) if wanted]
    by_type = Counter(item[3].event_type or "?" for item in kept)
    return [item[4] for item in kept], by_type


def _record(event: EventConfig, body: bytes) -> DeliveryRecorded:
    headers = {k: v.encode("latin-1") for k, v in sign(event, body, now=time.time()).items()}
    return delivery_record(event, headers, body, "hmac-sha256")


@dataclass
class Facts:
    """What the views hold, read straight from the database (for checks and context)."""

    server_version: str
    roster_rows: int
    payments_rows: int
    surname: str
    matching: dict[str, int]
    registered: int
    deleted: int
    checked_in: int
    paid: int
    inside_now: int
    currencies: dict[str, int]
    methods: dict[str, int]


def _facts(database_url: str, surname: str) -> Facts:
    with psycopg.connect(database_url) as conn:

        def one(query: str, *params: Any) -> Any:
            row = conn.execute(query, params).fetchone()
            assert row is not None
            return row[0]

        base = "SELECT count(*) FROM analytics.roster WHERE event = %s AND "
        like = f"%{surname}%"
        matching = {
            "status=registered": one(base + "status = 'registered'", SLUG),
            "role=speaker": one(base + "status <> 'deleted' AND role = 'speaker'", SLUG),
            "checked_in=true": one(base + "status <> 'deleted' AND checked_in", SLUG),
            "paid=false": one(base + "status <> 'deleted' AND NOT paid", SLUG),
            f"q={surname}": one(
                base + "status <> 'deleted' AND "
                "(first_name ILIKE %s OR last_name ILIKE %s OR email ILIKE %s)",
                SLUG,
                like,
                like,
                like,
            ),
        }
        currencies: dict[str, int] = dict(
            conn.execute(
                "SELECT currency, count(*) FROM analytics.payments WHERE event = %s GROUP BY 1 "
                "ORDER BY 2 DESC",
                (SLUG,),
            ).fetchall()
        )
        methods: dict[str, int] = dict(
            conn.execute(
                "SELECT method, count(*) FROM analytics.payments WHERE event = %s GROUP BY 1 "
                "ORDER BY 2 DESC",
                (SLUG,),
            ).fetchall()
        )
        return Facts(
            server_version=str(one("SHOW server_version")).split()[0],
            roster_rows=one(base + "true", SLUG),
            payments_rows=one("SELECT count(*) FROM analytics.payments WHERE event = %s", SLUG),
            surname=str(surname),
            matching=matching,
            registered=one(base + "status = 'registered'", SLUG),
            deleted=one(base + "status = 'deleted'", SLUG),
            checked_in=one(base + "checked_in", SLUG),
            paid=one(base + "paid", SLUG),
            inside_now=one(
                "SELECT coalesce(sum(inside_now), 0) FROM analytics.occupancy WHERE event = %s",
                SLUG,
            ),
            currencies=currencies,
            methods=methods,
        )


def _print_seeding(seeded: Seeded, facts: Facts) -> None:
    print(
        f"VACUUM ANALYZE in {seeded.analyze_s:.1f} s\n\n"
        f"seeded {seeded.deliveries:,} deliveries about {facts.roster_rows:,} attendees "
        f"(asked {seeded.attendees:,}): "
        + ", ".join(f"{kind} {n:,}" for kind, n in seeded.by_type.most_common())
    )
    print(
        f"seeding {seeded.simulate_s:.1f} s simulate + {seeded.append_s:.1f} s append; "
        f"projecting (Runner.catch_up, batches of 5,000) {seeded.project_s:.1f} s "
        f"({seeded.deliveries / seeded.project_s:,.0f} deliveries/s)"
    )
    print(
        f"roster: {facts.registered:,} registered, {facts.deleted:,} deleted, "
        f"{facts.checked_in:,} checked in, {facts.paid:,} paid, {facts.inside_now:,} inside now; "
        f"{facts.payments_rows:,} payments ("
        + ", ".join(f"{k} {v:,}" for k, v in facts.currencies.items())
        + "; "
        + ", ".join(f"{k} {v:,}" for k, v in facts.methods.items())
        + ")\n",
        flush=True,
    )


# --- The service under test ------------------------------------------------------------------


def _start_server(database_url: str, work: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ROLLCALL_SECRET": SECRET,
    }
    argv = [sys.executable, "-m", "service.cli", "--log-level", "warning", "serve"]
    log = (work / "serve.log").open("wb")
    server = subprocess.Popen(
        [*argv, "--port", str(port)], env=env, cwd=ROOT, stdout=log, stderr=log
    )
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchFailure("rollcall serve exited during startup")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    _stop_server(server)
    raise BenchFailure("rollcall serve did not become ready")


def _stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is not None:
        return
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _read_token(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return issue(conn, "read", "bench_queries")


def _print_log_tail(path: Path) -> None:
    if path.exists():
        lines = path.read_text(errors="replace").splitlines()[-20:]
        if lines:
            print("last lines of the service's log:", *lines, sep="\n  ", file=sys.stderr)


# --- Measuring ---------------------------------------------------------------------------


def _measure(
    args: argparse.Namespace, pid: int, token: str, facts: Facts
) -> tuple[list[Measurement], list[Export]]:
    base = f"/v1/events/{SLUG}"
    headers = {"Authorization": f"Bearer {token}"}
    with (
        httpx.Client(
            base_url=f"http://127.0.0.1:{args.port}{base}", headers=headers, timeout=60
        ) as streaming,
        _Lean(args.port, base, headers) as client,
    ):
        print(
            f"measuring over HTTP: {args.warmup} warm-up and {args.requests} measured requests "
            "per kind, one at a time on one keep-alive connection",
            flush=True,
        )
        print(f"load average before: {_load()}", flush=True)
        roster = _roster(client, args, facts)
        occupancy = Measurement(OCCUPANCY, OCCUPANCY_TARGET_MS)
        _repeat(args, occupancy, lambda: _occupancy(client))
        timeline = Measurement(TIMELINE, TIMELINE_TARGET_MS)
        _repeat(args, timeline, lambda: _timeline(client))
        clients = _clients(args, client, _Httpx(streaming))
        exports = [
            _export(
                streaming,
                pid,
                f"roster CSV, status=all (run {run + 1})",
                "/roster",
                {"format": "csv", "status": "all"},
                facts.roster_rows,
                CSV_TARGET_S,
            )
            for run in range(args.csv_runs)
        ]
        exports.append(
            _export(
                streaming,
                pid,
                "payments CSV",
                "/payments",
                {"format": "csv"},
                facts.payments_rows,
                None,
            )
        )
    print(f"load average after: {_load()}", flush=True)
    return [*roster, occupancy, timeline, *clients], exports


class Client(Protocol):
    def get(self, path: str, params: dict[str, str]) -> tuple[float, Any]:
        """One GET: milliseconds until the whole answer is in, and its JSON."""
        ...


class _Lean:
    """One keep-alive HTTP/1.1 connection of the standard library's client."""

    def __init__(self, port: int, base: str, headers: dict[str, str]) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self._base = base
        self._headers = headers

    def __enter__(self) -> _Lean:
        return self

    def __exit__(self, *exc: object) -> None:
        self._connection.close()

    def get(self, path: str, params: dict[str, str]) -> tuple[float, Any]:
        target = self._base + path + (f"?{urlencode(params)}" if params else "")
        started = time.perf_counter()
        try:
            self._connection.request("GET", target, headers=self._headers)
            response = self._connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as error:
            raise BenchFailure(f"GET {path} {params}: {error!r}") from error
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise BenchFailure(f"GET {path} {params}: {response.status} {body[:300]!r}")
        return elapsed, msgspec.json.decode(body)


class _Httpx:
    """The same GET through httpx (the client these figures came from before 2026-12-01)."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def get(self, path: str, params: dict[str, str]) -> tuple[float, Any]:
        started = time.perf_counter()
        try:
            response = self._client.get(path, params=params)
        except httpx.HTTPError as error:
            raise BenchFailure(f"GET {path} {params}: {error!r}") from error
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise BenchFailure(f"GET {path} {params}: {response.status_code} {response.text[:300]}")
        return elapsed, response.json()


def _clients(args: argparse.Namespace, lean: Client, other: Client) -> list[Measurement]:
    """The first page of status=registered through both clients, alternating: what the client
    itself adds to a figure."""
    params = {"limit": str(PAGE), "status": "registered"}
    measured = (
        Measurement("status=registered page 1, http.client", ROSTER_TARGET_MS),
        Measurement("  the same through httpx (client check)", ROSTER_TARGET_MS),
    )
    for round_ in range(args.warmup + args.requests):
        for client, into in zip((lean, other), measured, strict=True):
            elapsed, _ = client.get("/roster", params)
            if round_ >= args.warmup:
                into.samples.append(elapsed)
    return list(measured)


def _load() -> str:
    """The machine's 1/5/15-minute load averages: other work shares the cores and the clock."""
    return " ".join(f"{n:.2f}" for n in os.getloadavg()) + f" ({os.cpu_count()} cores)"


def _repeat(args: argparse.Namespace, into: Measurement, request: Callable[[], float]) -> None:
    for _ in range(args.warmup):
        request()
    into.samples = [request() for _ in range(args.requests)]


def _occupancy(client: Client) -> float:
    elapsed, body = client.get("/occupancy", {})
    if not isinstance(body.get("inside"), int):
        raise BenchFailure(f"occupancy answered {body}")
    return elapsed


def _timeline(client: Client) -> float:
    params = {"bucket": "5m", "from": f"{DAY}T00:00:00Z", "to": f"{_next_day()}T00:00:00Z"}
    elapsed, body = client.get("/occupancy/timeline", params)
    if len(body["buckets"]) != 288:
        raise BenchFailure(f"the timeline has {len(body['buckets'])} buckets, not 288")
    return elapsed


def _next_day() -> str:
    return (date.fromisoformat(DAY) + timedelta(days=1)).isoformat()


def _roster(client: Client, args: argparse.Namespace, facts: Facts) -> list[Measurement]:
    """Rotate the filters; each filter walks `--pages` pages with the cursor, then starts over."""
    surname = facts.surname
    filters: list[tuple[str, dict[str, str], Callable[[dict[str, Any]], bool]]] = [
        ("status=registered", {"status": "registered"}, lambda a: a["status"] == "registered"),
        ("role=speaker", {"role": "speaker"}, lambda a: a["role"] == "speaker"),
        ("checked_in=true", {"checked_in": "true"}, lambda a: a["checked_in"] is True),
        ("paid=false", {"paid": "false"}, lambda a: a["paid"] is False),
        (
            f"q={surname}",
            {"q": surname},
            lambda a: any(
                surname.lower() in (a[k] or "").lower()
                for k in ("first_name", "last_name", "email")
            ),
        ),
    ]
    measured = {
        name: Measurement(f"roster page, {name}", ROSTER_TARGET_MS, facts.matching[name])
        for name, _, _ in filters
    }
    first_pages = Measurement("  of which first pages (no cursor)", ROSTER_TARGET_MS)
    cursor_pages = Measurement(f"  of which pages 2-{args.pages} (with cursor)", ROSTER_TARGET_MS)
    walks: dict[str, tuple[int, str | None]] = {name: (0, None) for name, _, _ in filters}
    for round_ in range(args.warmup + args.requests):
        for name, params, matches in filters:
            page, cursor = walks[name]
            query = {"limit": str(PAGE), **params}
            if cursor is not None:
                query["cursor"] = cursor
            elapsed, body = client.get("/roster", query)
            items = body["items"]
            expected = min(PAGE, max(0, facts.matching[name] - PAGE * page))
            if len(items) != expected or not all(matches(a) for a in items):
                raise BenchFailure(
                    f"roster {name} page {page + 1}: {len(items)} rows, expected {expected} "
                    "matching rows"
                )
            following = body["next_cursor"]
            walks[name] = (
                (page + 1, following) if following and page + 1 < args.pages else (0, None)
            )
            if round_ >= args.warmup:
                measured[name].samples.append(elapsed)
                (first_pages if cursor is None else cursor_pages).samples.append(elapsed)
    overall = Measurement(ROSTER_OVERALL, ROSTER_TARGET_MS, None)
    overall.samples = [s for m in measured.values() for s in m.samples]
    return [*measured.values(), overall, first_pages, cursor_pages]


def _export(
    client: httpx.Client,
    pid: int,
    name: str,
    path: str,
    params: dict[str, str],
    expected: int,
    target_s: float | None,
) -> Export:
    """Stream a CSV export; count its rows while the service's RSS is sampled every 50 ms."""
    rss_before, hwm_before = _memory(pid)
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(_memory(pid)[0])
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines = size = 0
    first_byte: float | None = None
    started = time.perf_counter()
    try:
        with client.stream("GET", path, params=params) as response:
            if response.status_code != 200:
                response.read()
                raise BenchFailure(f"GET {path}: {response.status_code} {response.text[:300]}")
            for chunk in response.iter_bytes():
                if first_byte is None:
                    first_byte = time.perf_counter() - started
                lines += chunk.count(b"\n")
                size += len(chunk)
    except httpx.HTTPError as error:
        raise BenchFailure(f"GET {path} {params}: {error!r}") from error
    finally:
        elapsed = time.perf_counter() - started
        stop.set()
        sampler.join()
    time.sleep(0.2)
    rss_after, hwm_after = _memory(pid)
    rows = lines - 1  # the header line
    if rows != expected:
        raise BenchFailure(f"{name}: {rows:,} rows, expected {expected:,}")
    return Export(
        name=name,
        rows=rows,
        expected=expected,
        megabytes=size / 2**20,
        seconds=elapsed,
        first_byte_ms=1000 * (first_byte or elapsed),
        rss_before_mb=rss_before,
        rss_peak_mb=max([rss_before, rss_after, *samples]),
        rss_after_mb=rss_after,
        hwm_before_mb=hwm_before,
        hwm_after_mb=hwm_after,
        target_s=target_s,
    )


def _tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [pid]
    try:
        for child in children.read_text().split():
            found += _tree(int(child))
    except OSError:
        pass
    return found


def _memory(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (MB) of the service's processes, summed."""
    rss = hwm = 0
    for process in _tree(pid):
        try:
            status = Path(f"/proc/{process}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm += int(line.split()[1])
    return rss / 1024, hwm / 1024


# --- Report --------------------------------------------------------------------------------


def _percentile(samples: list[float], p: float) -> float:
    """Nearest rank: the smallest sample with at least p% of the samples at or below it."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _print_report(measurements: list[Measurement], exports: list[Export], facts: Facts) -> None:
    columns = ("requests", "matching", "p50 ms", "p99 ms", "max ms", "target p99", "met?")
    header = f"{'measurement':44}" + "".join(f"{c:>11}" for c in columns)
    print()
    print(header)
    print("-" * len(header))
    for m in measurements:
        matching = f"{m.matching:,}" if m.matching is not None else ""
        target = f"<= {m.target_ms:g} ms" if m.target_ms is not None else ""
        print(
            f"{m.name:44}{len(m.samples):>11,}{matching:>11}{m.p50:>11.2f}{m.p99:>11.2f}"
            f"{max(m.samples):>11.2f}{target:>11}{_yes(m.met):>11}"
        )
    export_columns = (
        *("rows", "MB", "seconds", "first byte", "target", "met?"),
        *("RSS before", "RSS peak", "RSS after", "HWM before", "HWM after"),
    )
    header = f"{'export (streamed, rows counted)':36}" + "".join(f"{c:>11}" for c in export_columns)
    print()
    print(header)
    print("-" * len(header))
    for e in exports:
        target = f"<= {e.target_s:g} s" if e.target_s is not None else ""
        print(
            f"{e.name:36}{e.rows:>11,}{e.megabytes:>11.1f}{e.seconds:>11.2f}"
            f"{f'{e.first_byte_ms:.0f} ms':>11}{target:>11}{_yes(e.met):>11}"
            f"{e.rss_before_mb:>11.0f}{e.rss_peak_mb:>11.0f}{e.rss_after_mb:>11.0f}"
            f"{e.hwm_before_mb:>11.0f}{e.hwm_after_mb:>11.0f}"
        )
    print("(RSS and HWM: the service's, MB; RSS sampled every 50 ms while streaming)")
    by_name = {m.name: m for m in measurements}
    roster = by_name[ROSTER_OVERALL]
    runs = [e for e in exports if e.target_s is not None]
    slowest = max(runs, key=lambda e: e.seconds)
    growth = max(e.rss_peak_mb for e in runs) - runs[0].rss_before_mb
    # A buffered export would grow by at least its size (62 MB for 100,000 attendees); a
    # streamed one by its buffers, and not again on the next run.
    drift = runs[-1].rss_after_mb - runs[0].rss_after_mb
    flat = growth <= FLAT_MB and drift <= FLAT_MB / 4
    print("\nthe issue's targets:")
    for label, m in (
        (f"roster page p99, all filters ({facts.roster_rows:,} attendees)", roster),
        ("occupancy now p99", by_name[OCCUPANCY]),
        ("timeline (one day, 5-minute buckets) p99", by_name[TIMELINE]),
    ):
        print(f"  {label:58}{m.p99:9.1f} ms   {f'(<= {m.target_ms:g} ms)':12}{_yes(m.met)}")
    print(
        f"  {f'CSV export of {slowest.rows:,} rows, slowest of {len(runs)}':58}"
        f"{slowest.seconds:9.2f} s    {f'(<= {CSV_TARGET_S:g} s)':12}{_yes(slowest.met)}"
    )
    print(
        f"  {'service memory flat: peak growth over the exports':58}{growth:+9.0f} MB   "
        f"(<= {FLAT_MB} MB; {slowest.megabytes:.0f} MB streamed each run)  {_yes(flat)}"
    )
    print(f"  {'  and RSS after the last run vs after the first':58}{drift:+9.1f} MB")
    machine = f"{os.cpu_count()} cores, {_memory_gb():.0f} GiB"
    print(f"\nmachine: {machine}, PostgreSQL {facts.server_version}; client and service share it")


def _yes(met: bool) -> str:
    return "yes" if met else "NO"


def _memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


# --- Databases -----------------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
