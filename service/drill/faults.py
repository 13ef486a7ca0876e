"""Scenarios where something dies: the service, the database, the projection runner, a replica.

Each keeps a JTE-like sender (retrying anything not acknowledged) running through the fault,
then checks the promise: every acknowledged delivery stored exactly once, views equal to a
fresh rebuild."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

import psycopg

from service.drill.harness import (
    DrillError,
    Workspace,
    check_views,
    stored_ids,
    wait_for,
)
from service.drill.report import Finding, Size
from service.sender import Report, post_all
from service.simulator import SignedDelivery, SimulationOptions

SENDERS = 16


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


# --- Shared by the scenarios ----------------------------------------------------------------


def simulated(ws: Workspace, count: int, seed: int) -> list[SignedDelivery]:
    """The first `count` deliveries of a simulated day (about three per attendee)."""
    deliveries = ws.day(SimulationOptions(seed=seed, attendees=max(10, count // 3 + 50)))
    if len(deliveries) < count:
        raise DrillError(f"the simulator made {len(deliveries)} deliveries, not {count}")
    return deliveries[:count]


def send_with_faults(
    url: str,
    deliveries: Sequence[SignedDelivery],
    database_url: str,
    faults: int,
    fault: Callable[[int], None],
) -> Report:
    """Send everything with retries while `fault(step)` runs `faults` times, spread evenly
    over the run by how much the store already holds."""
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

    async def run() -> Report:
        injector = asyncio.create_task(asyncio.to_thread(inject))
        try:
            return await post_all(url, deliveries, concurrency=SENDERS, retry=True, timeout=10)
        finally:
            done.set()
            await injector

    return asyncio.run(run())


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
    with psycopg.connect(database_url, connect_timeout=2) as conn:
        row = conn.execute(
            "SELECT coalesce(max(notification_id), 0) FROM rollcall.deliveries_events"
        ).fetchone()
    return int(row[0]) if row else 0
