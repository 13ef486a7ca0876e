"""Scenarios where something dies: the service, the database, the projection runner, a replica.

Each keeps a JTE-like sender (retrying anything not acknowledged) running through the fault,
then checks the promise: every acknowledged delivery stored exactly once, views equal to a
fresh rebuild."""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
import psycopg

from projections.registry import VIEW_NAMES
from projections.schema import LOCK_NAMESPACE, runner_lock
from projections.status import read_status
from service.eventstore.source import SOURCE
from service.jte.sender import Report, post_all
from service.jte.simulator import SignedDelivery, SimulationOptions
from tests.drill.harness import (
    PYTHON_ROLLCALL,
    Child,
    DrillError,
    Serve,
    Workspace,
    check_views,
    stored_ids,
    wait_for,
)
from tests.drill.report import Finding, Size

SENDERS = 16
BOUND: Final = 5.0  # seconds: every timing promise of these scenarios (times Size.patience)


def crash(ws: Workspace, size: Size) -> Finding:
    """kill -9 the service `size.kills` times while a retrying sender delivers a day."""
    deliveries = simulated(ws, size.crash_deliveries, seed=1)
    with ws.database("crash") as url:
        server = ws.serve("crash", url).start()
        restarts: list[float] = []

        def fault(step: int) -> None:
            server.kill()
            server.start(wait=False)
            restarts.append(server.wait_ready())

        report = send_with_faults(server.url, deliveries, url, size.kills, fault)
        finding = Finding(
            scenario="crash",
            load=f"{len(deliveries):,} deliveries, {SENDERS} senders, {report.retries:,} retries",
            faults=f"{len(restarts)} x kill -9 of rollcall serve",
        )
        check_stored(finding, url, deliveries, report)
        server.stop()
        views = check_views(finding, url)
        finding.check(len(restarts) == size.kills, f"only {len(restarts)} kills landed")
        finding.figures = (
            f"{len(restarts)} kills, each back up within {max(restarts, default=0):.1f} s; "
            f"sender held {report.per_second:,.0f} deliveries/s overall; "
            f"views ({views.rows:,} rows) equal a fresh rebuild: {views.equal}"
        )
        return finding


def outage(ws: Workspace, size: Size) -> Finding:
    """Stop PostgreSQL for `size.outage_seconds` mid-run while a retrying sender delivers and
    a probe measures every answer; rollcall itself is never restarted."""
    deliveries = simulated(ws, size.outage_deliveries, seed=2)
    with ws.database("outage") as url:
        server = ws.serve("outage", url).start()
        pid = server.pid
        bound = size.within(BOUND)
        probe = Probe(server.url, simulated(ws, PROBES, seed=3), timeout=bound + 1)
        window = Window()

        def fault(step: int) -> None:
            ws.postgres.down()
            window.down = time.monotonic()
            time.sleep(size.outage_seconds)
            window.up_called = time.monotonic()
            ws.postgres.up()
            window.up = time.monotonic()
            recover(url, probe, window, bound)

        probe.start()
        try:
            report = send_with_faults(server.url, deliveries, url, 1, fault)
        finally:
            probe.stop()
        finding = Finding(
            scenario="outage",
            load=f"{len(deliveries):,} deliveries, {SENDERS} senders, {report.retries:,} retries"
            f", {len(probe.samples)} probes",
            faults=f"PostgreSQL down {size.outage_seconds:.0f} s (immediate stop), then up",
        )
        check_stored(finding, url, deliveries, report)
        check_probes(finding, url, probe)
        slowest = check_outage(finding, probe, window, bound)
        during = sum(1 for s in probe.samples if window.down <= s.sent < window.up_called)
        alive = server.process is not None and server.process.poll() is None
        finding.check(alive and server.pid == pid, "rollcall serve did not survive the outage")
        crashes = _log_count(server.log, "intake failed unexpectedly")
        finding.check(crashes == 0, f"intake failed unexpectedly {crashes} times (see its log)")
        views = check_views(finding, url)
        server.stop()
        finding.figures = (
            f"{during} probes while PostgreSQL was down, "
            f"slowest 503 during the outage {slowest * 1000:.0f} ms; first accept "
            f"{_seconds(window.accepted)} after PostgreSQL was back, views caught up with it "
            f"{_seconds(window.projected)} after; sender held {report.per_second:,.0f} "
            f"deliveries/s overall; views ({views.rows:,} rows) equal a fresh rebuild: "
            f"{views.equal}"
        )
        return finding


def projection_crash(ws: Workspace, size: Size) -> Finding:
    """kill -9 a separate `rollcall project` `size.projection_kills` times mid-batch while it
    catches up with a store it has never seen, restarting it each time."""
    deliveries = simulated(ws, size.projection_deliveries, seed=4)
    with ws.database("projection") as url:
        server = ws.serve("projection-intake", url, ROLLCALL_PROJECTIONS="off").start()
        report = send_with_faults(server.url, deliveries, url, 0, lambda step: None)
        server.stop()
        head = _stored(url)
        finding = Finding(
            scenario="projection-crash",
            load=f"{len(deliveries):,} deliveries stored, then projected from the first",
            faults=f"{size.projection_kills} x kill -9 of rollcall project mid-batch",
        )
        check_stored(finding, url, deliveries, report)
        projector = Projector(ws, url)
        try:
            started = time.monotonic()
            kills = kill_projector(projector, url, head, size.projection_kills)
            caught_up = wait_for(lambda: _projected(url) >= head, 600)
            elapsed = time.monotonic() - started
            views = check_views(finding, url)
        finally:
            projector.stop()
        landed = sum(kill.in_batch for kill in kills)
        finding.check(
            landed == size.projection_kills,
            f"{landed} of {size.projection_kills} kills landed mid-batch",
        )
        finding.check(caught_up is not None, "the restarted runner never caught up")
        finding.figures = (
            f"{landed} kills mid-batch, at positions "
            f"{', '.join(f'{kill.position:,}' for kill in kills)} of {head:,}; "
            f"restarted each time, the runner caught up in {elapsed:.1f} s overall; "
            f"views ({views.rows:,} rows) equal a fresh rebuild: {views.equal}"
        )
        return finding


def replicas(ws: Workspace, size: Size) -> Finding:
    """Two `rollcall serve` on one database, both taking intake: one runner per view; kill -9
    the one holding the views' locks mid-run and time the other's takeover."""
    deliveries = simulated(ws, size.replica_deliveries, seed=5)
    with ws.database("replicas") as url:
        first = ws.serve("replica-a", url).start()
        if wait_for(lambda: len(lock_holders(url)) == len(VIEW_NAMES), 60) is None:
            raise DrillError("replica-a never took the views' locks")
        second = ws.serve("replica-b", url).start()
        servers = (first, second)
        watch = LockWatch(url, servers)
        takeover = Takeover()

        bound = size.within(BOUND)

        def fault(step: int) -> None:
            take_over(url, servers, takeover, bound)

        watch.start()
        try:
            report = send_with_faults([s.url for s in servers], deliveries, url, 1, fault)
        finally:
            watch.stop()
        finding = Finding(
            scenario="replicas",
            load=f"{len(deliveries):,} deliveries over 2 replicas, {SENDERS} senders, "
            f"{report.retries:,} retries",
            faults="kill -9 of the replica holding the views' locks",
        )
        check_stored(finding, url, deliveries, report)
        steady, held = check_locks(finding, watch, takeover, bound)
        views = check_views(finding, url)
        for server in servers:
            server.stop()
        finding.figures = (
            f"{takeover.victim} held {takeover.views} of {len(VIEW_NAMES)} views and was killed; "
            f"{takeover.survivor} took over every view {_seconds(takeover.seconds)} later; "
            f"{held} of {steady} lock samples (outside the takeover) had one live runner "
            f"session per view; "
            f"sender held {report.per_second:,.0f} deliveries/s overall; "
            f"views ({views.rows:,} rows) equal a fresh rebuild: {views.equal}"
        )
        return finding


# --- outage: a probe that measures every answer ---------------------------------------------

PROBES: Final = 3000  # five minutes of probing at most


class Window(msgspec.Struct, kw_only=True):
    """When the outage began and ended (time.monotonic()), and the recovery after it."""

    down: float = 0.0
    up_called: float = 0.0
    up: float = 0.0
    accepted: float | None = None  # seconds after `up` until the first 2xx
    projected: float | None = None  # seconds after `up` until the views had applied it


def recover(database_url: str, probe: Probe, window: Window, bound: float) -> None:
    """Time the first accept after the database came back, and the views applying it (waiting
    past `bound`, so that a late one is measured rather than missed)."""
    wait_for(lambda: probe.accepted_after(window.up), bound + 30)
    first = probe.accepted_after(window.up)
    if first is None or first.position is None:
        return
    window.accepted = first.sent + first.seconds - window.up
    position = first.position
    if wait_for(lambda: _projected(database_url) >= position, bound + 60) is not None:
        window.projected = time.monotonic() - window.up


def check_outage(finding: Finding, probe: Probe, window: Window, bound: float) -> float:
    """The probe's promises around an outage, each answer and the recovery within `bound`
    seconds; the slowest 503 while the database was down."""
    during = [s for s in probe.samples if window.down <= s.sent < window.up_called]
    finding.check(bool(during), "the probe sent nothing during the outage")
    slow = [s for s in probe.samples if s.seconds > bound]
    finding.check(not slow, f"{len(slow)} probes waited over {bound:.0f} s (or never answered)")
    odd = [s for s in probe.samples if not s.fine]
    statuses = ", ".join(sorted({str(s.status) for s in odd}))
    finding.check(
        not odd, f"{len(odd)} probes answered neither 2xx nor 503 + Retry-After: {statuses}"
    )
    # A 2xx means stored: impossible while the database is down.
    lies = [s for s in during if s.ok and s.sent + s.seconds < window.up_called]
    finding.check(not lies, f"{len(lies)} probes acknowledged while PostgreSQL was down")
    finding.check(
        window.accepted is not None and window.accepted <= bound,
        f"first accept {_seconds(window.accepted)} after PostgreSQL was back",
    )
    finding.check(
        window.projected is not None and window.projected <= bound,
        f"views caught up {_seconds(window.projected)} after PostgreSQL was back",
    )
    return max((s.seconds for s in during if s.status == 503), default=0.0)


def check_probes(finding: Finding, database_url: str, probe: Probe) -> None:
    """Every probe delivery acknowledged is stored (duplicates are counted over the store)."""
    stored = stored_ids(database_url)
    lost = sum(1 for s in probe.samples if s.ok and stored[s.delivery_id] == 0)
    finding.lost += lost
    finding.check(lost == 0, f"{lost} acknowledged probe deliveries lost")


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """One probe request: when it was sent (time.monotonic()), how long it took, the answer."""

    sent: float
    seconds: float
    status: int | None  # None: no answer within the probe's timeout
    retry_after: bool
    delivery_id: str
    position: int | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def fine(self) -> bool:
        """An answer DESIGN.md allows: 2xx, or 503 telling the sender when to retry."""
        return self.ok or (self.status == 503 and self.retry_after)


class _Position(msgspec.Struct):
    position: int | None = None


class Probe:
    """Posts one signed delivery about every 100 ms, never retrying, with a short timeout, in a
    thread of its own: what intake answers at each moment, and how fast."""

    def __init__(
        self,
        url: str,
        deliveries: Sequence[SignedDelivery],
        interval: float = 0.1,
        timeout: float = BOUND + 1,
    ) -> None:
        self.samples: list[Sample] = []
        self._timeout = timeout
        self._url = url
        self._deliveries = deliveries
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def accepted_after(self, moment: float) -> Sample | None:
        """The first probe sent after `moment` that was acknowledged."""
        return next((s for s in list(self.samples) if s.sent >= moment and s.ok), None)

    def _run(self) -> None:
        # A timeout over the bound, so that a slow answer is measured rather than cut short.
        with httpx.Client(base_url=self._url, timeout=self._timeout, trust_env=False) as client:
            for delivery in self._deliveries:
                if self._stop.is_set():
                    return
                sample = _probe(client, delivery)
                self.samples.append(sample)
                self._stop.wait(max(0.0, self._interval - sample.seconds))


def _probe(client: httpx.Client, delivery: SignedDelivery) -> Sample:
    headers = [(k.encode(), v.encode("latin-1")) for k, v in delivery.headers.items()]
    sent = time.monotonic()
    status, retry_after, position = None, False, None
    try:
        response = client.post("/webhooks/jte", content=delivery.body.encode(), headers=headers)
    except httpx.HTTPError:
        pass
    else:
        status, retry_after = response.status_code, "retry-after" in response.headers
        if status < 300:
            position = msgspec.json.decode(response.content, type=_Position).position
    return Sample(
        sent=sent,
        seconds=time.monotonic() - sent,
        status=status,
        retry_after=retry_after,
        delivery_id=delivery.delivery_id,
        position=position,
    )


# --- projection-crash: the runner alone, killed mid-batch -----------------------------------


class Projector(Child):
    """A `rollcall project` process (the projection runner alone), which can be killed."""

    def __init__(self, ws: Workspace, database_url: str) -> None:
        self.log = ws.root / "projector.log"
        self._env = ws.env(database_url, "projector")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def session(self) -> str:
        """The application_name of its database sessions."""
        assert self.process is not None
        return f"rollcall runner pid={self.process.pid}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*PYTHON_ROLLCALL, "--log-format", "json", "project"],
                env=self._env,
                stdout=out,
                stderr=out,
            )


class Kill(msgspec.Struct, frozen=True):
    """Where the views stood when the runner was killed, and whether it was inside a batch."""

    position: int
    in_batch: bool


def kill_projector(projector: Projector, database_url: str, head: int, kills: int) -> list[Kill]:
    """Start the runner, then kill -9 it `kills` times spread over its catch-up to `head` (never
    in its last batch), each time while a batch's transaction is open, and start it again."""
    projector.start()
    done = []
    with psycopg.connect(database_url, autocommit=True) as watch:
        for step in range(kills):
            mark = head * (step + 1) // (kills + 2)
            if wait_for(partial(_projected_past, database_url, mark), 600) is None:
                raise DrillError(f"the runner never reached {mark}: see {projector.log}")
            in_batch = wait_for(partial(inside_batch, watch, projector.session), 30, 0.002)
            projector.kill()
            done.append(Kill(_projected(database_url), in_batch is not None))
            projector.start()
    return done


def inside_batch(conn: psycopg.Connection[Any], session: str) -> bool:
    """Whether the runner's work connection is inside a batch's transaction."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
        "AND datname = current_database() AND xact_start IS NOT NULL "
        "AND state IN ('active', 'idle in transaction') "
        # Not its other connection, which only takes locks and listens.
        "AND query NOT ILIKE '%%pg_try_advisory_lock%%' AND query NOT ILIKE 'LISTEN%%'",
        (session,),
    ).fetchone()
    return bool(row and row[0])


# --- replicas: one runner per view, and a takeover ------------------------------------------

_RUNNER_PID: Final = re.compile(r"rollcall runner pid=(\d+)")


def lock_holders(database_url: str) -> dict[str, list[int]]:
    """For each view whose runner lock is held: the pids of the processes holding it, read
    from pg_locks and the application_name the runner gives its sessions (-1: not a runner)."""
    keys = {runner_lock(view): view for view in VIEW_NAMES}
    with psycopg.connect(database_url, connect_timeout=2) as conn:
        rows = conn.execute(
            "SELECT l.objid::int, a.application_name FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s "
            "AND l.objsubid = 2 AND l.objid::int = ANY(%s) "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (LOCK_NAMESPACE, list(keys)),
        ).fetchall()
    holders: dict[str, list[int]] = {}
    for key, name in rows:
        match = _RUNNER_PID.fullmatch(name or "")
        holders.setdefault(keys[key], []).append(_server_of(int(match.group(1))) if match else -1)
    return holders


def _server_of(pid: int) -> int:
    """The serve process a runner works for: `rollcall serve` runs it in a child process
    (service/runner_process.py), whose parent is the server; any other runner is its own."""
    try:
        if b"service.runner_process" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return pid


class LockSample(msgspec.Struct, frozen=True):
    """Who held each view's runner lock at one moment, and which serve pids were alive."""

    at: float
    holders: dict[str, list[int]]
    alive: frozenset[int]


class LockWatch:
    """Reads the runner locks about every 100 ms in a thread of its own."""

    def __init__(self, database_url: str, servers: Sequence[Serve]) -> None:
        self.samples: list[LockSample] = []
        self._url = database_url
        self._servers = servers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="locks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            alive = frozenset(
                s.pid for s in self._servers if s.process is not None and s.process.poll() is None
            )
            try:
                holders = lock_holders(self._url)
            except psycopg.Error:
                continue
            self.samples.append(LockSample(time.monotonic(), holders, alive))


class Takeover(msgspec.Struct, kw_only=True):
    """The kill of the replica holding the locks, and how long the other took to take over."""

    victim: str = "-"
    survivor: str = "-"
    views: int = 0  # how many views the victim held
    killed: float = 0.0  # time.monotonic() just before the kill
    seconds: float | None = None  # until the survivor held every view


def take_over(
    database_url: str, servers: Sequence[Serve], takeover: Takeover, bound: float
) -> None:
    """kill -9 the replica holding most views' locks; time the other taking every view (for
    well past `bound`); then start the killed one again (it must stand by)."""
    held = Counter(pid for pids in lock_holders(database_url).values() for pid in pids)
    pid = held.most_common(1)[0][0] if held else None
    victim = next((s for s in servers if s.pid == pid), None)
    if victim is None:
        raise DrillError(f"the views' locks are held by no replica: {dict(held)}")
    survivor = next(s for s in servers if s is not victim)
    takeover.victim, takeover.survivor, takeover.views = (
        victim.name,
        survivor.name,
        held[victim.pid],
    )
    takeover.killed = time.monotonic()
    victim.kill()

    def all_taken() -> bool:
        holders = lock_holders(database_url)
        return all(holders.get(view) == [survivor.pid] for view in VIEW_NAMES)

    if wait_for(all_taken, bound + 60, interval=0.02) is not None:
        takeover.seconds = time.monotonic() - takeover.killed
    victim.start()


def check_locks(
    finding: Finding, watch: LockWatch, takeover: Takeover, bound: float
) -> tuple[int, int]:
    """Outside the takeover, each view's lock was held by exactly one session, of a live
    replica; the takeover itself took at most `bound` seconds. How many samples were outside,
    and how many of those held."""
    end = takeover.killed + (takeover.seconds if takeover.seconds is not None else bound)
    steady = [s for s in watch.samples if not takeover.killed <= s.at <= end]
    bad = [
        s
        for s in steady
        if any(len(s.holders.get(v, [])) != 1 or s.holders[v][0] not in s.alive for v in VIEW_NAMES)
    ]
    finding.check(len(steady) > 0, "the lock watch read nothing")
    finding.check(not bad, f"{len(bad)} lock samples without exactly one live runner per view")
    finding.check(
        takeover.seconds is not None and takeover.seconds <= bound,
        f"{takeover.survivor} took over {_seconds(takeover.seconds)} after the kill",
    )
    return len(steady), len(steady) - len(bad)


# --- Shared by the scenarios ----------------------------------------------------------------


def simulated(ws: Workspace, count: int, seed: int) -> list[SignedDelivery]:
    """The first `count` deliveries of a simulated day (about three per attendee)."""
    deliveries = ws.day(SimulationOptions(seed=seed, attendees=max(10, count // 3 + 50)))
    if len(deliveries) < count:
        raise DrillError(f"the simulator made {len(deliveries)} deliveries, not {count}")
    return deliveries[:count]


def send_with_faults(
    url: str | Sequence[str],
    deliveries: Sequence[SignedDelivery],
    database_url: str,
    faults: int,
    fault: Callable[[int], None],
) -> Report:
    """Send everything with retries while `fault(step)` runs `faults` times, spread evenly
    over the run by how much the store already holds. With several URLs, each delivery id
    always goes to the same one of them."""
    urls = [url] if isinstance(url, str) else list(url)
    done = threading.Event()

    def inject() -> None:
        for step in range(faults):
            mark = len(deliveries) * (step + 1) // (faults + 1)

            def reached(mark: int = mark) -> bool:
                return done.is_set() or _stored(database_url) >= mark

            if wait_for(reached, 600) is None:
                raise DrillError("the store stopped growing")
            if done.is_set():
                return
            fault(step)

    async def send(target: str, share: Sequence[SignedDelivery]) -> Report:
        concurrency = max(1, SENDERS // len(urls))
        return await post_all(target, share, concurrency=concurrency, retry=True, timeout=10)

    async def run() -> Report:
        injector = asyncio.create_task(asyncio.to_thread(inject))
        try:
            shares = _shares(deliveries, len(urls))
            return _merged(await asyncio.gather(*map(send, urls, shares)))
        finally:
            done.set()
            await injector

    return asyncio.run(run())


def _shares(deliveries: Sequence[SignedDelivery], n: int) -> list[list[SignedDelivery]]:
    # By delivery id, so that every send of one delivery meets the same replica: the sender's
    # accepted-once accounting is per share.
    shares: list[list[SignedDelivery]] = [[] for _ in range(n)]
    for delivery in deliveries:
        shares[zlib.crc32(delivery.delivery_id.encode()) % n].append(delivery)
    return shares


def _merged(reports: Sequence[Report]) -> Report:
    if len(reports) == 1:
        return reports[0]
    return Report(
        sent=sum(r.sent for r in reports),
        elapsed=max(r.elapsed for r in reports),
        retries=sum(r.retries for r in reports),
        http_statuses=dict(sum((Counter(r.http_statuses) for r in reports), Counter())),
        statuses=dict(sum((Counter(r.statuses) for r in reports), Counter())),
        no_answer=sum(r.no_answer for r in reports),
        unexpected=sum(r.unexpected for r in reports),
        acknowledged=[a for r in reports for a in r.acknowledged],
        outcomes=[o for r in reports for o in r.outcomes],
    )


def check_stored(
    finding: Finding, database_url: str, deliveries: Sequence[SignedDelivery], report: Report
) -> None:
    """Every delivery acknowledged and stored exactly once; fills lost and duplicated."""
    stored = stored_ids(database_url)
    acknowledged = {a.delivery_id for a in report.acknowledged}
    wanted = {d.delivery_id for d in deliveries if d.expect in ("accepted", "duplicate")}
    finding.lost = sum(1 for d in acknowledged | wanted if stored[d] == 0)
    finding.duplicated = sum(n - 1 for n in stored.values() if n > 1)
    unacknowledged = len(wanted - acknowledged)
    finding.check(finding.lost == 0, f"{finding.lost} deliveries lost")
    finding.check(finding.duplicated == 0, f"{finding.duplicated} stored twice")
    finding.check(unacknowledged == 0, f"{unacknowledged} never acknowledged")
    finding.check(report.unexpected == 0, f"{report.unexpected} unexpected answers")


def _stored(database_url: str) -> int:
    with psycopg.connect(database_url, connect_timeout=2) as conn, conn.cursor() as cur:
        return SOURCE.head(cur)


def _projected(database_url: str) -> int:
    """The position every live view has applied up to."""
    with psycopg.connect(database_url, connect_timeout=2) as conn:
        return min(s.position for s in read_status(conn, SOURCE))


def _projected_past(database_url: str, position: int) -> bool:
    return _projected(database_url) >= position


def _log_count(log: Path, text: str) -> int:
    return log.read_text(errors="replace").count(text) if log.exists() else 0


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"
