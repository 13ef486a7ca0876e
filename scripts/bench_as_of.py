"""Point-in-time benchmark: roster pages `as_of` random moments of a 20,000-attendee day, over
real HTTP against `rollcall serve` (target: p99 <= 1 s), and the same pages now, for the ratio.

    .venv/bin/python scripts/bench_as_of.py [--attendees 20000] [--events 60000] [--requests 60]

Seeds like scripts/bench_queries.py (simulator days merged in occurrence order, straight into
the event store, views built by Runner.catch_up()), then measures one request at a time:
50-row roster pages as of a random instant of the conference day (random filter of none,
checked_in=true or paid=true), then the same pages now. Prints wall p50/p99 and the service's
CPU per request (from /proc). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_queries as bq

from service.eventstore import keys
from service.eventstore.database import drop_database, new_database, server

TARGET_MS = 1000.0
DAY_START = datetime(2026, 5, 14, 7, tzinfo=UTC)
FILTERS = ("", "&checked_in=true", "&paid=true")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(client: httpx.Client, pid: int, paths: list[str]) -> tuple[list[float], float]:
    samples = []
    cpu = _cpu_seconds(pid)
    for path in paths:
        started = time.perf_counter()
        answer = client.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200 or (len(answer.json()["items"]) == 0 and "as_of" not in path):
            raise bq.BenchFailure(f"{path}: {answer.status_code} {answer.text[:200]}")
    return samples, (_cpu_seconds(pid) - cpu) / len(paths) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--attendees", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=8351)
    args = parser.parse_args()
    # The seeding here and the service seal and open personal data under one master key (else
    # each would take the one in its own data directory, and the service would refuse to start).
    os.environ.setdefault(keys.MASTER_KEY_ENV, keys.generate_master_key())
    work = Path(tempfile.mkdtemp(prefix="rollcall-bench-asof-"))
    configured = os.environ.get("DATABASE_URL") or None
    try:
        with server(configured, work / "data") as server_url:
            database_url = new_database(server_url, "bench_as_of")
            try:
                seeded = bq._seed(database_url, args)
                print(f"seeded {seeded.deliveries:,} deliveries about {args.attendees:,} attendees")
                serving = bq._start_server(database_url, work, args.port)
                try:
                    return _run(args, database_url, serving.pid)
                finally:
                    bq._stop_server(serving)
            finally:
                drop_database(server_url, database_url)
    except bq.BenchFailure as failure:
        print(f"bench_as_of: FAILED: {failure}", file=sys.stderr)
        bq._print_log_tail(work / "serve.log")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, database_url: str, pid: int) -> int:
    rng = random.Random(args.seed)
    token = bq._read_token(database_url)
    base = f"http://127.0.0.1:{args.port}/v1/events/{bq.SLUG}"
    moments = [DAY_START + timedelta(minutes=rng.uniform(0, 720)) for _ in range(args.requests)]
    filters = [rng.choice(FILTERS) for _ in range(args.requests)]
    as_of = [
        f"/roster?limit=50&as_of={m.isoformat().replace('+00:00', 'Z')}{f}"
        for m, f in zip(moments, filters, strict=True)
    ]
    now = [f"/roster?limit=50{f}" for f in filters]
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        _measure(client, pid, as_of[:3] + now[:3])  # warm-up
        timed, cpu = _measure(client, pid, as_of)
        timed_now, cpu_now = _measure(client, pid, now)
    p50, p99 = bq._percentile(timed, 50), bq._percentile(timed, 99)
    n50, n99 = bq._percentile(timed_now, 50), bq._percentile(timed_now, 99)
    print(f"\nroster page as_of a random moment ({len(timed)} requests):")
    print(f"  p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(timed):.0f} ms, "
          f"service CPU {cpu:.0f} ms/request; target p99 <= {TARGET_MS:.0f} ms: "
          f"{'met' if p99 <= TARGET_MS else 'NOT met'}")  # fmt: skip
    print(f"roster page now (same filters): p50 {n50:.1f} ms, p99 {n99:.1f} ms, "
          f"service CPU {cpu_now:.1f} ms/request")  # fmt: skip
    print(f"ratio as_of/now, p50: {p50 / n50:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
