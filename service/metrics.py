"""Prometheus metrics for /metrics: intake outcomes, verification failures, append latency,
batch sizes, and the projections' positions and lag.

Counters live in the process (with several uvicorn workers, each reports its own; sum them in
Prometheus). Projection figures are read from the database at scrape time, so every worker
reports the same.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from typing import Final

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

_LATENCY_BUCKETS: Final = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500)


class Histogram:
    """Cumulative buckets, a sum and a count, as Prometheus expects."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            edge = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{le="{edge}"}} {running}')
        return [*out, f"{name}_sum {self.total:.6f}", f"{name}_count {self.count}"]


class Metrics:
    """This process's counters, safe to update from the event loop and the store threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.deliveries: dict[str, int] = defaultdict(int)
        self.verification_failures: dict[str, int] = defaultdict(int)
        self.connections_dropped: dict[str, int] = defaultdict(int)
        self.append_seconds = Histogram(_LATENCY_BUCKETS)
        self.batch_size = Histogram(_BATCH_BUCKETS)

    def delivery(self, outcome: str) -> None:
        """Count one answered delivery by outcome (accepted, duplicate, unauthorized, ...)."""
        with self._lock:
            self.deliveries[outcome] += 1

    def verification_failed(self, reason: str) -> None:
        with self._lock:
            self.verification_failures[reason] += 1

    def connection_dropped(self, reason: str) -> None:
        """Count a connection closed to make room: `idle`, or `unverified` (a body arriving)."""
        with self._lock:
            self.connections_dropped[reason] += 1

    def appended(self, size: int, seconds: float) -> None:
        """One transaction of `size` deliveries that took `seconds`."""
        with self._lock:
            self.batch_size.observe(size)
            self.append_seconds.observe(seconds)

    def text(self) -> list[str]:
        with self._lock:
            lines = [
                "# HELP rollcall_deliveries_total Deliveries answered, by outcome.",
                "# TYPE rollcall_deliveries_total counter",
                *(
                    f'rollcall_deliveries_total{{outcome="{k}"}} {v}'
                    for k, v in sorted(self.deliveries.items())
                ),
                "# HELP rollcall_duplicates_total Deliveries seen before (not stored again).",
                "# TYPE rollcall_duplicates_total counter",
                f"rollcall_duplicates_total {self.deliveries.get('duplicate', 0)}",
                "# HELP rollcall_verification_failures_total Deliveries refused 401, by reason.",
                "# TYPE rollcall_verification_failures_total counter",
                *(
                    f'rollcall_verification_failures_total{{reason="{_label(k)}"}} {v}'
                    for k, v in sorted(self.verification_failures.items())
                ),
                "# HELP rollcall_connections_dropped_total Connections closed to make room.",
                "# TYPE rollcall_connections_dropped_total counter",
                *(
                    f'rollcall_connections_dropped_total{{reason="{k}"}} {v}'
                    for k, v in sorted(self.connections_dropped.items())
                ),
                "# HELP rollcall_append_seconds Time to append one batch to the event store.",
                "# TYPE rollcall_append_seconds histogram",
                *self.append_seconds.lines("rollcall_append_seconds"),
                "# HELP rollcall_batch_size Deliveries per event-store transaction.",
                "# TYPE rollcall_batch_size histogram",
                *self.batch_size.lines("rollcall_batch_size"),
            ]
        return lines


METRICS: Final = Metrics()


async def endpoint(request: Request) -> Response:
    """GET /metrics: this process's counters and the projections as the database has them."""
    lines = METRICS.text()
    try:
        lines += await _projection_lines(request.app.state.pool)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        lines += ["# projections: database unavailable"]
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


async def _projection_lines(pool: asyncpg.Pool) -> list[str]:
    exists = await pool.fetchval("SELECT to_regclass('rollcall.view_versions') IS NOT NULL")
    head = await pool.fetchval(
        "SELECT coalesce(max(notification_id), 0) FROM rollcall.deliveries_events"
    )
    lines = [
        "# HELP rollcall_store_head Highest position in the event store.",
        "# TYPE rollcall_store_head gauge",
        f"rollcall_store_head {head}",
    ]
    if not exists:
        return lines
    rows = await pool.fetch(
        "SELECT v.view, coalesce(t.notification_id, 0) AS position, "
        "(v.failed_at IS NOT NULL) AS failed FROM rollcall.view_versions v "
        "LEFT JOIN rollcall.projection_tracking t "
        "ON t.application_name = v.view || '_v' || v.version WHERE v.state = 'live'"
    )
    lines += [
        "# HELP rollcall_projection_position Position each live view has applied up to.",
        "# TYPE rollcall_projection_position gauge",
        *(f'rollcall_projection_position{{view="{r["view"]}"}} {r["position"]}' for r in rows),
        "# HELP rollcall_projection_lag_events Deliveries stored but not yet applied.",
        "# TYPE rollcall_projection_lag_events gauge",
        *(
            f'rollcall_projection_lag_events{{view="{r["view"]}"}} {max(0, head - r["position"])}'
            for r in rows
        ),
        "# HELP rollcall_projection_failed 1 while a view's runner is failing.",
        "# TYPE rollcall_projection_failed gauge",
        *(f'rollcall_projection_failed{{view="{r["view"]}"}} {int(r["failed"])}' for r in rows),
        "# HELP rollcall_projection_lag_seconds Age of the oldest delivery not yet applied.",
        "# TYPE rollcall_projection_lag_seconds gauge",
    ]
    for row in rows:
        lag = await _lag_seconds(pool, row["position"], head)
        lines.append(f'rollcall_projection_lag_seconds{{view="{row["view"]}"}} {lag:.3f}')
    return lines


async def _lag_seconds(pool: asyncpg.Pool, position: int, head: int) -> float:
    if position >= head:
        return 0.0
    # The receipt time sits in the stored JSON state; read just that key.
    age = await pool.fetchval(
        "SELECT extract(epoch FROM now() - (convert_from(state, 'UTF8')::jsonb->>'timestamp')"
        "::timestamptz) FROM rollcall.deliveries_events WHERE notification_id > $1 "
        "ORDER BY notification_id LIMIT 1",
        position,
    )
    return max(0.0, float(age or 0))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
