"""Prometheus metrics (served at /metrics, service/http/probes.py), on prometheus_client.

Under `rollcall serve --workers N` (N > 1) every worker writes its counters to files in
PROMETHEUS_MULTIPROC_DIR (a directory per run under the data directory, service/cli/serve.py)
and the worker answering a scrape sums them all: every scrape reports the whole server, and a
worker that dies keeps its counts (its live gauges are dropped). With one process the values
live in memory. Series carry no worker label, so replicas sum by dropping `instance` alone.

Figures the database holds (views' positions, lag and dead letters, the quarantined count) are
read at scrape time by whichever process answers, so every worker and replica reports the same.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from typing import Final

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from projections.status import ViewStatus

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
OTHER_EVENT: Final = "other"  # the event label of a request for no configured event

_LATENCY_BUCKETS: Final = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500)
# Outcomes of a delivery JTE sent and rollcall authenticated: they move "last delivery".
_RECEIVED: Final = frozenset({"accepted", "duplicate", "quarantined"})

# The process's own metrics: registered here (not in prometheus_client's global registry), and
# in multiprocess mode written to the run's directory as well.
REGISTRY: Final = CollectorRegistry(auto_describe=True)

DELIVERIES: Final = Counter(
    "rollcall_deliveries",
    "Requests to the webhook paths answered, by JTE event (configured slug, else `other`) and "
    "outcome (accepted, duplicate, quarantined, or the error code answered).",
    ["event", "outcome"],
    registry=REGISTRY,
)
REJECTIONS: Final = Counter(
    "rollcall_rejections",
    "Requests refused at intake (4xx), by reason (snake_case; see README).",
    ["reason"],
    registry=REGISTRY,
)
CONNECTIONS_DROPPED: Final = Counter(
    "rollcall_connections_dropped",
    "Connections closed to make room: `idle`, or `unverified` (a body arriving).",
    ["reason"],
    registry=REGISTRY,
)
APPEND_SECONDS: Final = Histogram(
    "rollcall_append_seconds",
    "Time to append one batch to the event store.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE: Final = Histogram(
    "rollcall_batch_size",
    "Deliveries per event-store transaction.",
    buckets=_BATCH_BUCKETS,
    registry=REGISTRY,
)
QUEUE_DEPTH: Final = Gauge(
    "rollcall_intake_queue_depth",
    "Verified deliveries waiting for the event store (all workers; sampled each second).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
LAST_DELIVERY: Final = Gauge(
    "rollcall_last_delivery_timestamp_seconds",
    "Unix time of the last authenticated delivery, by JTE event (sampled each second).",
    ["event"],
    multiprocess_mode="max",
    registry=REGISTRY,
)
HTTP_SECONDS: Final = Histogram(
    "rollcall_http_request_duration_seconds",
    "Time to answer a request other than a delivery, by route template, method and status.",
    ["route", "method", "status"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)


class Metrics:
    """What the service counts, kept cheap for intake: label children are looked up once, and
    the gauges intake moves are sampled (`flush`) rather than written per delivery."""

    def __init__(self) -> None:
        self._deliveries: dict[tuple[str, str], Callable[[], None]] = {}
        self._rejections: dict[str, Callable[[], None]] = {}
        self._last: dict[str, float] = {}
        self._flushed: dict[str, float] = {}
        self._depth: Callable[[], int] | None = None
        self._lock = threading.Lock()

    def delivery(self, event: str, outcome: str) -> None:
        """Count one answered request to the webhook paths."""
        inc = self._deliveries.get((event, outcome))
        if inc is None:
            inc = self._deliveries[(event, outcome)] = DELIVERIES.labels(event, outcome).inc
        inc()
        if outcome in _RECEIVED:
            self._last[event] = time.time()

    def rejected(self, reason: str) -> None:
        """Count one request refused with a 4xx, by its snake_case reason."""
        inc = self._rejections.get(reason)
        if inc is None:
            inc = self._rejections[reason] = REJECTIONS.labels(reason).inc
        inc()

    def connection_dropped(self, reason: str) -> None:
        CONNECTIONS_DROPPED.labels(reason).inc()

    def appended(self, size: int, seconds: float) -> None:
        """One transaction of `size` deliveries that took `seconds`."""
        BATCH_SIZE.observe(size)
        APPEND_SECONDS.observe(seconds)

    def watch_queue(self, depth: Callable[[], int] | None) -> None:
        """Where `flush` reads the intake queue's depth (None: no queue, as at shutdown)."""
        self._depth = depth

    def flush(self) -> None:
        """Write the sampled gauges: the queue's depth and each event's last delivery."""
        with self._lock:
            QUEUE_DEPTH.set(self._depth() if self._depth is not None else 0)
            for event, at in list(self._last.items()):
                if self._flushed.get(event) != at:
                    LAST_DELIVERY.labels(event).set(at)
                    self._flushed[event] = at


METRICS: Final = Metrics()


def multiprocess_dir() -> str | None:
    """The run's metrics directory when this process is one of several workers."""
    return os.environ.get(MULTIPROC_ENV) or None


def worker_exited() -> None:
    """This worker is stopping: its live gauges (queue depth) no longer count."""
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]


def exposition(extra: Collector) -> bytes:
    """The whole server's metrics, then `extra`'s (what the database says), as Prometheus text."""
    METRICS.flush()
    path = multiprocess_dir()
    registry = CollectorRegistry(auto_describe=False)
    if path is None:
        registry.register(_Merged(REGISTRY, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR))
    else:
        _reap_dead_workers(path)
        multiprocess.MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
        registry.register(_Workers(path))
    registry.register(_BuildInfo())
    registry.register(extra)
    return generate_latest(registry)


class _Merged:
    """Several collectors as one."""

    def __init__(self, *collectors: Collector) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


_PID_FILE: Final = re.compile(r"_(\d+)\.db$")


def _worker_pids(path: str) -> set[int]:
    pids = set()
    for name in glob.glob(os.path.join(path, "*.db")):
        found = _PID_FILE.search(name)
        if found:
            pids.add(int(found.group(1)))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_dead_workers(path: str) -> None:
    """A worker killed without its shutdown (SIGKILL, OOM) leaves live gauges: drop them."""
    for pid in _worker_pids(path):
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


class _Workers:
    """Process figures of each live worker, read from /proc (a worker's own collector would
    report only the worker answering the scrape)."""

    def __init__(self, path: str) -> None:
        self._path = path

    def collect(self) -> Iterator[Metric]:
        pids = sorted(pid for pid in _worker_pids(self._path) if _alive(pid))
        workers = GaugeMetricFamily("rollcall_workers", "Live worker processes.", value=len(pids))
        cpu = GaugeMetricFamily(
            "rollcall_worker_cpu_seconds",
            "CPU time of each live worker (user + system).",
            labels=["pid"],
        )
        memory = GaugeMetricFamily(
            "rollcall_worker_resident_memory_bytes",
            "Resident memory of each live worker.",
            labels=["pid"],
        )
        for pid, (seconds, rss) in _proc_figures(pids):
            cpu.add_metric([str(pid)], seconds)
            memory.add_metric([str(pid)], rss)
        yield from (workers, cpu, memory)


def _proc_figures(pids: Iterable[int]) -> Iterator[tuple[int, tuple[float, float]]]:
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # After the command: state is field 3; utime 14, stime 15, rss 24 (man 5 proc).
        yield pid, ((int(fields[11]) + int(fields[12])) / ticks, int(fields[21]) * page)


class _BuildInfo:
    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "rollcall_build_info",
            "Always 1: the running rollcall's version, and Python's.",
            labels=["version", "python"],
        )
        info.add_metric([_version(), platform.python_version()], 1)
        yield info


def _version() -> str:
    try:
        return metadata.version("rollcall")
    except metadata.PackageNotFoundError:
        return "unknown"


class Standing:
    """What the database says at scrape time: the store's head, each live view's position, lag,
    failure and dead letters, and the quarantined deliveries stored."""

    def __init__(self, head: int, statuses: list[ViewStatus], quarantined: int | None) -> None:
        self._head, self._statuses, self._quarantined = head, statuses, quarantined

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "rollcall_database_up", "1: the database answered this scrape.", value=1
        )
        yield GaugeMetricFamily(
            "rollcall_store_head", "Highest position in the event store.", value=self._head
        )
        if self._quarantined is not None:
            yield GaugeMetricFamily(
                "rollcall_quarantined_deliveries",
                "Deliveries stored quarantined (verified, not readable); replay re-reads them.",
                value=self._quarantined,
            )
        live = [s for s in self._statuses if s.version is not None]
        if not self._statuses:
            return  # no views' series before the views are set up
        for name, help_text, value in _PROJECTION_GAUGES:
            family = GaugeMetricFamily(name, help_text, labels=["view"])
            for status in live:
                family.add_metric([status.view], value(status))
            yield family


class Unavailable:
    """The database did not answer the scrape: say so as a gauge, not by silence."""

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "rollcall_database_up", "0: the database did not answer this scrape.", value=0
        )


_PROJECTION_GAUGES: Final[tuple[tuple[str, str, Callable[[ViewStatus], float]], ...]] = (
    (
        "rollcall_projection_position",
        "Position each live view has applied up to.",
        lambda s: s.position,
    ),
    (
        "rollcall_projection_lag_events",
        "Deliveries stored but not yet applied.",
        lambda s: s.lag_events,
    ),
    (
        "rollcall_projection_lag_seconds",
        "Age of the oldest delivery not yet applied.",
        lambda s: s.lag_seconds,
    ),
    (
        "rollcall_projection_failed",
        "1 while a view's runner is failing.",
        lambda s: int(s.state == "failed"),
    ),
    (
        "rollcall_projection_dead_letters",
        "Deliveries the view's live version could not apply.",
        lambda s: s.dead_letters,
    ),
)
