"""Intake benchmark: rollcall with group commit (a), without it (b), and the eventsourcing-docs
baseline receiver (c), driven by wrk with pre-signed simulator deliveries, all in one run.

    .venv/bin/python scripts/bench_intake.py [--duration 15] [--connections 64]
    .venv/bin/python scripts/bench_intake.py --against HEAD~1 [--rounds 2]

With `--against REF` it instead measures rollcall's own configurations, intake only (a) and
the default `rollcall serve` with live views (ap), for this checkout and for the commit REF
(exported with `git archive`, run with this venv), alternating between the two (ABBA) so that
both see the same machine, and prints each one's median beside the other with the ratio, and
the server's CPU per delivery, which other load on the machine disturbs less than throughput.

Needs wrk (`apt-get install wrk`). Uses DATABASE_URL's server if set, else an embedded
PostgreSQL; every configuration gets a fresh database. Prints deliveries/s, p50/p99 latency and
the service's peak RSS per configuration, the ratios a/c and a/b, and checks that every
delivery acknowledged in run (a) is stored exactly once. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import psycopg

from service.config import EventConfig
from service.eventstore import keys
from service.eventstore.database import drop_database, new_database, server
from service.jte.simulator import (
    SignedDelivery,
    SimulatedDelivery,
    SimulationOptions,
    sign_all,
    simulate,
)

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-chosen-by-the-organiser"  # noqa: S105 - a throwaway test secret

WRK_SCRIPT = r"""
-- Each wrk thread sends its own file of pre-signed requests, in order; past the end it wraps
-- around, and the repeats are answered `duplicate`.
local threads, next_id = {}, 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end
function init(args)
  local f = assert(io.open(args[1] .. "/requests-" .. id .. ".bin", "rb"))
  local data = f:read("*a")
  f:close()
  requests, index, positions, statuses = {}, 0, {}, {}
  local pos = 1
  while pos <= #data do
    local nl = data:find("\n", pos, true)
    local len = tonumber(data:sub(pos, nl - 1))
    requests[#requests + 1] = data:sub(nl + 1, nl + len)
    pos = nl + 1 + len
  end
end
function request()
  index = index + 1
  if index > #requests then index = 1 end
  return requests[index]
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local p = body:match('"position":(%d+)')
  if p then positions[#positions + 1] = p end
end
function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("WRK_RESULT"), "w"))
  out:write(string.format("requests %d\nduration_us %d\n", summary.requests, summary.duration))
  out:write(string.format("p50_us %d\np99_us %d\n", latency:percentile(50), latency:percentile(99)))
  local e = summary.errors
  out:write(string.format("socket_errors %d\n", e.connect + e.read + e.write + e.timeout))
  for _, t in ipairs(threads) do
    for status, count in pairs(t:get("statuses")) do
      out:write(string.format("status %s %d\n", status, count))
    end
    for _, p in ipairs(t:get("positions")) do out:write("position " .. p .. "\n") end
  end
  out:close()
end
"""


@dataclass
class Run:
    """What one configuration achieved."""

    name: str
    label: str
    requests: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    peak_rss_mb: float = 0.0
    socket_errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    positions: list[int] = field(default_factory=list)
    server_cpu: float = 0.0
    wrk_cpu: float = 0.0

    @property
    def cpu_us_per_delivery(self) -> float:
        """The server's CPU per accepted delivery: steadier than throughput on a shared machine."""
        ok = self.statuses.get(200, 0)
        return self.server_cpu * self.seconds / ok * 1e6 if ok else 0.0

    @property
    def per_second(self) -> float:
        ok = self.statuses.get(200, 0)
        return ok / self.seconds if self.seconds else 0.0


def main() -> int:
    # This process seeds the store and starts rollcall processes: they must share one master key.
    os.environ.setdefault(keys.MASTER_KEY_ENV, keys.generate_master_key())
    args = _arguments()
    if shutil.which("wrk") is None:
        print("bench_intake: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="rollcall-bench-"))
    try:
        with server(os.environ.get("DATABASE_URL") or None, work / "data") as server_url:
            if args.against:
                return _compare(args, work, server_url)
            return _run(args, work, server_url)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path, server_url: str) -> int:
    threads = args.threads
    deliveries = _signed_deliveries(args.deliveries)
    _write_requests(work, deliveries, threads, args.port)
    (work / "bench.lua").write_text(WRK_SCRIPT)
    print(
        f"{len(deliveries)} pre-signed deliveries from the simulator; wrk -t{threads} "
        f"-c{args.connections} -d{args.duration}s against each configuration\n"
    )
    configurations = [
        ("a", "rollcall, group commit (intake only)", ["serve"], INTAKE_ONLY),
        ("ap", "default serve: live views in a child process", ["serve"], DEFAULT_SERVE),
        ("at", "live views in a thread of the server (opt-in)", ["serve"], THREAD_SERVE),
        (
            "b",
            "rollcall, one transaction per delivery",
            ["serve"],
            {"ROLLCALL_GROUP_COMMIT": "off", "ROLLCALL_PROJECTIONS": "off"},
        ),
        ("c", "eventsourcing docs: verify + save() per request", ["baseline"], {}),
    ]
    if args.workers > 1:
        workers = ["serve", "--workers", str(args.workers)]
        label = f"rollcall, group commit, {args.workers} workers (intake only)"
        configurations.insert(1, ("a2", label, workers, INTAKE_ONLY))
    runs = []
    for name, label, command, env in configurations:
        database_url = new_database(server_url, f"bench_intake_{name}")
        run = _measure(work, name, label, command, env, database_url, args)
        if name == "a":
            check = _exactly_once(database_url, run.positions)
        runs.append(run)
        drop_database(server_url, database_url)
    _print_table(runs, check, args)
    return 0 if check.ok else 1


INTAKE_ONLY = {"ROLLCALL_GROUP_COMMIT": "on", "ROLLCALL_PROJECTIONS": "off"}
DEFAULT_SERVE = {"ROLLCALL_GROUP_COMMIT": "on", "ROLLCALL_PROJECTIONS": "on"}
THREAD_SERVE = {**DEFAULT_SERVE, "ROLLCALL_PROJECTION_RUNNER": "thread"}


def _compare(args: argparse.Namespace, work: Path, server_url: str) -> int:
    """Configurations (a) and (ap) for this checkout and for `args.against`, alternating."""
    other = _export(args.against, work / "against")
    deliveries = _signed_deliveries(args.deliveries)
    _write_requests(work, deliveries, args.threads, args.port)
    (work / "bench.lua").write_text(WRK_SCRIPT)
    checkouts = {"this checkout": ROOT, args.against: other}
    print(
        f"{len(deliveries)} pre-signed deliveries; wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration}s; {args.rounds} rounds, alternating this checkout and {args.against}\n"
    )
    runs: dict[tuple[str, str], list[Run]] = {}
    for round_ in range(args.rounds):
        for name, env in (("a", INTAKE_ONLY), ("ap", DEFAULT_SERVE)):
            # ABBA: which checkout goes first alternates, so neither always inherits the
            # previous run's after-effects (checkpoints, autovacuum of a dropped database).
            order = list(checkouts.items())
            for label, root in order if round_ % 2 == 0 else reversed(order):
                database_url = new_database(server_url, f"bench_intake_{name}")
                run = _measure(work, name, label, ["serve"], env, database_url, args, root)
                drop_database(server_url, database_url)
                runs.setdefault((name, label), []).append(run)
                print(f"  round {round_ + 1} ({name}) {label:24} {run.per_second:9,.0f}/s")
    print()
    header = f"{'configuration':44}{'this checkout':>16}{args.against:>16}{'ratio':>9}"
    print(header + "\n" + "-" * len(header))
    for name, title in (("a", "(a) intake only"), ("ap", "(ap) default serve, live views")):
        mine = statistics.median(r.per_second for r in runs[(name, "this checkout")])
        theirs = statistics.median(r.per_second for r in runs[(name, args.against)])
        print(f"{title + ', deliveries/s':44}{mine:16,.0f}{theirs:16,.0f}{mine / theirs:9.3f}")
        mine_p99 = statistics.median(r.p99_ms for r in runs[(name, "this checkout")])
        theirs_p99 = statistics.median(r.p99_ms for r in runs[(name, args.against)])
        print(f"{'    p99 ms':44}{mine_p99:16.1f}{theirs_p99:16.1f}{mine_p99 / theirs_p99:9.3f}")
        mine_cpu = statistics.median(r.cpu_us_per_delivery for r in runs[(name, "this checkout")])
        theirs_cpu = statistics.median(r.cpu_us_per_delivery for r in runs[(name, args.against)])
        print(
            f"{'    server CPU us per delivery':44}{mine_cpu:16.0f}{theirs_cpu:16.0f}"
            f"{mine_cpu / theirs_cpu:9.3f}"
        )
    print(f"(medians of {args.rounds} rounds; machine: {os.cpu_count()} cores)")
    return 0


def _export(ref: str, target: Path) -> Path:
    """The tree of commit `ref`, written to `target` (run there with this venv)."""
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per configuration")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--deliveries", type=int, default=200_000, help="distinct deliveries to pre-sign"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="also measure (a) with this many workers"
    )
    parser.add_argument("--port", type=int, default=8321)
    parser.add_argument(
        "--against", metavar="REF", help="compare (a) and (ap) with this git commit, same run"
    )
    parser.add_argument("--rounds", type=int, default=2, help="with --against: rounds each")
    return parser.parse_args()


def _signed_deliveries(count: int) -> list[SignedDelivery]:
    """Realistic JTE traffic from the simulator, HMAC-signed (default mode, body only)."""
    event = EventConfig(slug="default", mode="default", secrets=(SECRET,))
    deliveries: list[SimulatedDelivery] = []
    seed = 1
    while len(deliveries) < count:
        day = simulate(SimulationOptions(seed=seed, attendees=5_000))
        deliveries += [d for d in day if d.expect == "accepted"]
        seed += 1
    return sign_all(deliveries[:count], event, now=time.time())


def _write_requests(work: Path, deliveries: list[SignedDelivery], threads: int, port: int) -> None:
    """One file per wrk thread of length-prefixed raw HTTP requests."""
    for thread in range(threads):
        with (work / f"requests-{thread}.bin").open("wb") as out:
            for delivery in deliveries[thread::threads]:
                body = delivery.body.encode()
                lines = [b"POST /webhooks/jte HTTP/1.1", f"Host: 127.0.0.1:{port}".encode()]
                lines += [f"{k}: {v}".encode("latin-1") for k, v in delivery.headers.items()]
                lines += [f"Content-Length: {len(body)}".encode(), b"", b""]
                raw = b"\r\n".join(lines) + body
                out.write(f"{len(raw)}\n".encode() + raw)


def _measure(
    work: Path,
    name: str,
    label: str,
    command: list[str],
    env: dict[str, str],
    database_url: str,
    args: argparse.Namespace,
    root: Path = ROOT,
) -> Run:
    if command[0] == "baseline":
        argv = [
            sys.executable,
            str(ROOT / "scripts" / "baseline_receiver.py"),
            "--port",
            str(args.port),
        ]
    else:
        argv = [
            sys.executable,
            "-m",
            "service.cli",
            "--log-level",
            "warning",
            *command,
            "--port",
            str(args.port),
        ]
    server_env = {
        **os.environ,
        **env,
        "DATABASE_URL": database_url,
        "ROLLCALL_SECRET": SECRET,
        "ROLLCALL_DATA_DIR": str(work / f"rollcall-{name}"),
    }
    log = (work / f"{name}.log").open("wb")
    # `python -m` puts the working directory first on sys.path: `root`'s packages are the ones run.
    server = subprocess.Popen(argv, env=server_env, stdout=log, stderr=log, cwd=root)
    try:
        _wait_listening(args.port, server)
        cpu_before = _tree_cpu(server.pid)
        run = _run_wrk(work, name, label, args)
        run.server_cpu = (_tree_cpu(server.pid) - cpu_before) / run.seconds
        run.peak_rss_mb = _tree_peak_rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    return run


def _run_wrk(work: Path, name: str, label: str, args: argparse.Namespace) -> Run:
    result_file = work / f"{name}.result"
    wrk = subprocess.Popen(
        [
            "wrk",
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{args.duration}s",
            "--latency",
            "-s",
            str(work / "bench.lua"),
            f"http://127.0.0.1:{args.port}",
            "--",
            str(work),
        ],
        env={**os.environ, "WRK_RESULT": str(result_file)},
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(wrk.pid, 0)
    wrk.returncode = os.waitstatus_to_exitcode(status)
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed with {wrk.returncode}")
    run = Run(name=name, label=label)
    for line in result_file.read_text().splitlines():
        key, *values = line.split()
        if key == "status":
            run.statuses[int(values[0])] = run.statuses.get(int(values[0]), 0) + int(values[1])
        elif key == "position":
            run.positions.append(int(values[0]))
        elif key == "requests":
            run.requests = int(values[0])
        elif key == "duration_us":
            run.seconds = int(values[0]) / 1e6
        elif key == "p50_us":
            run.p50_ms = int(values[0]) / 1000
        elif key == "p99_us":
            run.p99_ms = int(values[0]) / 1000
        elif key == "socket_errors":
            run.socket_errors = int(values[0])
    run.wrk_cpu = (usage.ru_utime + usage.ru_stime) / run.seconds
    return run


@dataclass
class ExactlyOnce:
    acknowledged: int
    distinct_acknowledged: int
    stored: int
    missing: int
    duplicate_keys: int
    duplicate_delivery_ids: int
    server_version: str

    @property
    def ok(self) -> bool:
        return (
            self.missing == 0
            and self.duplicate_keys == 0
            and self.duplicate_delivery_ids == 0
            and self.acknowledged == self.distinct_acknowledged
        )


def _exactly_once(database_url: str, positions: list[int]) -> ExactlyOnce:
    """Every acknowledged position is stored, and no delivery is stored twice."""
    decoder = msgspec.json.Decoder(dict[str, object])
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT notification_id, originator_id, state FROM rollcall.deliveries_events"
        ).fetchall()
        version = conn.execute("SHOW server_version").fetchone()
    stored_positions = {row[0] for row in rows}
    keys = [row[1] for row in rows]
    delivery_ids = [decoder.decode(bytes(row[2]))["delivery_id"] for row in rows]
    return ExactlyOnce(
        acknowledged=len(positions),
        distinct_acknowledged=len(set(positions)),
        stored=len(rows),
        missing=len(set(positions) - stored_positions),
        duplicate_keys=len(keys) - len(set(keys)),
        duplicate_delivery_ids=len(delivery_ids) - len(set(delivery_ids)),
        server_version=str(version[0] if version else "?").split()[0],
    )


def _print_table(runs: list[Run], check: ExactlyOnce, args: argparse.Namespace) -> None:
    columns = ("deliveries/s", "p50 ms", "p99 ms", "peak RSS MB", "non-200", "server CPU")
    header = f"{'configuration':52}" + "".join(f"{name:>13}" for name in columns)
    print(header)
    print("-" * len(header))
    for run in runs:
        non_200 = sum(n for s, n in run.statuses.items() if s != 200) + run.socket_errors
        label = f"({run.name}) {run.label}"
        print(
            f"{label:52}{run.per_second:13,.0f}{run.p50_ms:13.1f}{run.p99_ms:13.1f}"
            f"{run.peak_rss_mb:13.0f}{non_200:13}{run.server_cpu:13.0%}"
        )
    by_name = {run.name: run for run in runs}
    a, b, c = by_name["a"], by_name["b"], by_name["c"]
    print()
    print(f"ratio a/c: {a.per_second / c.per_second:5.1f}x   (target >= 8x)")
    print(f"ratio a/b: {a.per_second / b.per_second:5.1f}x   (target >= 2x)")
    for name, title in (("ap", "default serve, live views"), ("at", "live views in a thread")):
        if name in by_name:
            run = by_name[name]
            print(
                f"ratio {name}/c: {run.per_second / c.per_second:4.1f}x   ({title}; p99 "
                f"{run.p99_ms:.1f} ms; target >= 10x, p99 <= 25 ms for the default)"
            )
    if "a2" in by_name:
        a2 = by_name["a2"]
        print(f"ratio a2/c: {a2.per_second / c.per_second:4.1f}x   ({args.workers} workers)")
    print(f"load generator: wrk used {max(r.wrk_cpu for r in runs):.0%} of a core at most")
    duplicated = check.duplicate_keys + check.duplicate_delivery_ids
    print(
        f"exactly once (a): {check.acknowledged:,} acknowledged, {check.stored:,} stored, "
        f"{check.missing} missing, {duplicated} duplicated -> {'OK' if check.ok else 'FAILED'}"
    )
    machine = f"{os.cpu_count()} cores, {_memory_gb():.0f} GiB"
    print(f"machine: {machine}, PostgreSQL {check.server_version}")


def _wait_listening(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the server under test exited during startup")
        try:
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the server under test did not start")


def _tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [pid]
    if children.exists():
        for child in children.read_text().split():
            found += _tree(int(child))
    return found


def _tree_cpu(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for process in _tree(pid):
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _tree_peak_rss_mb(pid: int) -> float:
    total = 0
    for process in _tree(pid):
        for line in Path(f"/proc/{process}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


def _memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


if __name__ == "__main__":
    sys.exit(main())
