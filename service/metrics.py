"""Prometheus metrics (served at /metrics, service/http/probes.py): intake outcomes, verification
failures, append latency, batch sizes, and the projections' positions and lag.

Counters live in the process (with several uvicorn workers, each reports its own; sum them in
Prometheus). Projection figures are the views' status (projections/status.py) read at scrape
time, so every worker reports the same.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Final

from projections.status import ViewStatus

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


def projection_lines(head: int, statuses: list[ViewStatus]) -> list[str]:
    """The store's head, and each live view's position, lag and failure as its status has them
    (no views' lines before the views are set up: `statuses` is empty then)."""
    lines = [
        "# HELP rollcall_store_head Highest position in the event store.",
        "# TYPE rollcall_store_head gauge",
        f"rollcall_store_head {head}",
    ]
    if not statuses:
        return lines
    live = [s for s in statuses if s.version is not None]
    for name, kind, help_text, value in _PROJECTION_GAUGES:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{view="{s.view}"}} {value(s)}' for s in live]
    return lines


_PROJECTION_GAUGES: Final[tuple[tuple[str, str, str, Callable[[ViewStatus], str]], ...]] = (
    (
        "rollcall_projection_position",
        "gauge",
        "Position each live view has applied up to.",
        lambda s: str(s.position),
    ),
    (
        "rollcall_projection_lag_events",
        "gauge",
        "Deliveries stored but not yet applied.",
        lambda s: str(s.lag_events),
    ),
    (
        "rollcall_projection_failed",
        "gauge",
        "1 while a view's runner is failing.",
        lambda s: str(int(s.state == "failed")),
    ),
    (
        "rollcall_projection_lag_seconds",
        "gauge",
        "Age of the oldest delivery not yet applied.",
        lambda s: f"{s.lag_seconds:.3f}",
    ),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
