"""The live projection runner: keeps every live view up to date with the event store.

One runner per view is active across all processes and hosts: a runner works only on the views
whose advisory lock it holds, confirmed before every batch, and keeps trying the others, so
when a process dies (and its connection with its locks) another takes over. Should two ever
overlap (a lock connection lost mid-batch), the batch's tracking check lets one of them write.
It wakes on the store's NOTIFY and also polls, so a lost notification never stalls it; after
losing the database it reconnects with backoff.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg import sql

from projections.fold import apply_records
from projections.registry import VIEW_NAMES, VIEWS
from projections.schema import (
    ANALYTICS,
    LOCK_NAMESPACE,
    SETUP_LOCK,
    SWAP_LOCK,
    Version,
    advisory_lock,
    clear_failure,
    create_version,
    ensure_internal,
    live_version,
    publish_views,
    record_failure,
    runner_lock,
    try_lock,
    versions,
)
from projections.source import DeliverySource, SourceUnavailable, read
from projections.tracking import StalePosition, ViewTracking, positions, view_tracking
from projections.view import Target

log = logging.getLogger("rollcall.projections")

_BACKOFF_FIRST: Final = 0.5
# A reconnection attempt costs one connect; waiting longer would delay the views' recovery
# after an outage by as much (the drill's outage scenario promises 5 s).
_BACKOFF_MAX: Final = 1.0
# Once caught up, the least time from one batch's start to the next one's. A batch costs about
# 25 round trips and their PostgreSQL work whatever its size: woken by every group commit of a
# busy intake, the runner would pay them every few milliseconds, on the cores intake needs.
# Counted from the batch's start, not its end: a batch that took this long already gathered
# the next one's deliveries, and waiting after it would only add to the views' lag (its budget
# is 100 ms at 1,000 deliveries/s).
LINGER: Final = 0.03


def ensure_views(database_url: str) -> ViewTracking:
    """Create the views' schemas, registry and tracking table, and a live version of each view
    if none exists; the views' tracking recorder."""
    with psycopg.connect(database_url, autocommit=True) as conn, advisory_lock(conn, SETUP_LOCK):
        ensure_internal(conn)
        for name in VIEW_NAMES:
            live = live_version(conn, name)
            if live is None:
                with conn.transaction():
                    version = create_version(conn, name, "live", VIEWS[name].ddl)
                    for statement in VIEWS[name].indexes(version):
                        conn.execute(statement)
                    publish_views(conn, ANALYTICS, VIEWS[name].analytics(version))
            else:
                # Both no-ops unless this release changed the view's tables or added an index.
                for statement in VIEWS[name].migrations(live) + VIEWS[name].indexes(live):
                    conn.execute(statement)
                # Nor this, unless this release added an analytics view (roster_search) or
                # changed one's columns (occupancy's entries and exits).
                published = VIEWS[name].analytics(live)
                if any(_outdated(conn, ANALYTICS, view, select) for view, select in published):
                    # In one transaction: each view is dropped and made again, and a reader in
                    # between would find none (a 503 for every read while the server starts).
                    with conn.transaction():
                        publish_views(conn, ANALYTICS, published)
        tracking = view_tracking(database_url)
        tracking.ensure_table(conn)
    return tracking


def _outdated(conn: psycopg.Connection[Any], schema: str, name: str, select: sql.Composed) -> bool:
    """Whether view `schema.name` is missing or has other columns than `select` gives."""
    row = conn.execute(
        "SELECT array(SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum)",
        (f"{schema}.{name}",),
    ).fetchone()
    published = row[0] if row else []
    try:
        with conn.transaction():
            cur = conn.execute(sql.SQL("SELECT * FROM ({}) q LIMIT 0").format(select))
    except psycopg.errors.UndefinedColumn:
        # A live version older than the select (a roster search table without `folded`):
        # it stays as published until a rebuild replaces it.
        return not published
    return [column.name for column in cur.description or []] != published


class Runner:
    """Applies new deliveries to the live views this process holds the locks of."""

    def __init__(
        self,
        database_url: str,
        source: DeliverySource,
        *,
        views: Sequence[str] = VIEW_NAMES,
        batch_size: int = 2000,
        poll_seconds: float = 0.5,
        linger_seconds: float = LINGER,
    ) -> None:
        self._url = database_url
        self._source = source
        self._views = list(views)
        self._batch_size = batch_size
        self._poll = poll_seconds
        self._linger = linger_seconds
        self.held: set[str] = set()
        self.applied = 0  # deliveries read by this runner's batches, for tests and logs
        self._failing = False
        self._tracking: ViewTracking | None = None

    def run(self, stop: threading.Event) -> None:
        """Keep the views up to date until `stop` is set; survive database outages."""
        backoff = _BACKOFF_FIRST
        while not stop.is_set():
            try:
                self._session(stop)
                backoff = _BACKOFF_FIRST
            except (
                psycopg.OperationalError,
                psycopg.InterfaceError,
                OSError,
                SourceUnavailable,  # from preparing the source, while the database is down
            ) as error:
                log.warning(
                    "projection runner lost the database (%s); retrying in %.1fs", error, backoff
                )
            except Exception as error:
                log.exception("projection runner failed; retrying in %.1fs", backoff)
                self._record_failure(error, sorted(self.held))
            else:
                continue
            self.held.clear()
            stop.wait(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def catch_up(self) -> int:
        """Once, in the caller's thread: take the locks, apply everything there is, let go."""
        self._prepare()
        with (
            psycopg.connect(self._url, autocommit=True, application_name=_name()) as locks,
            _work(self._url) as work,
        ):
            self.held.clear()  # locks belong to a session: this one holds none yet
            self._take_locks(locks)
            total = 0
            while applied := self._batch(locks, work):
                total += applied
            return total

    def _session(self, stop: threading.Event) -> None:
        self._prepare()
        with (
            psycopg.connect(self._url, autocommit=True, application_name=_name()) as locks,
            _work(self._url) as work,
        ):
            locks.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._source.channel)))
            log.info("projection runner connected")
            self.held.clear()
            while not stop.is_set():
                self._take_locks(locks)
                busy = False
                while self.held and not stop.is_set():
                    started = time.monotonic()
                    applied = self._batch(locks, work)
                    if not applied:
                        break
                    busy = True
                    if applied < self._batch_size:  # caught up: let the next batch gather
                        stop.wait(max(0.0, started + self._linger - time.monotonic()))
                if not busy:
                    for _ in locks.notifies(timeout=self._poll, stop_after=1):
                        pass

    def _prepare(self) -> None:
        """The store readable (created for a runner started before any intake ever ran), the
        views and their tracking in place."""
        self._source.prepare(self._url)
        self._tracking = ensure_views(self._url)

    def _take_locks(self, locks: psycopg.Connection[Any]) -> None:
        for view in self._views:
            if view not in self.held and try_lock(locks, runner_lock(view)):
                self.held.add(view)
                log.info("projection runner took over the %s view", view)

    def _confirm_locks(self, cur: psycopg.Cursor[Any], locks: psycopg.Connection[Any]) -> None:
        """Let go of the views whose lock the lock session no longer holds (asked from the work
        transaction, so confirming costs no round trip of its own); a lock connection that
        died holds nothing, and the session starts again when it next uses it."""
        row = cur.execute(
            "SELECT pg_advisory_xact_lock_shared(%s, %s)::text, array(SELECT objid::int "
            "FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = %s "
            "AND classid = %s)",
            (LOCK_NAMESPACE, SWAP_LOCK, locks.info.backend_pid, LOCK_NAMESPACE),
        ).fetchone()
        still = set(row[1]) if row else set()
        for view in sorted(self.held):
            if runner_lock(view) not in still:
                self.held.discard(view)
                log.warning("projection runner lost the %s view's lock", view)

    def _batch(self, locks: psycopg.Connection[Any], work: psycopg.Connection[Any]) -> int:
        """Apply one batch to the live versions of the held views, once their locks are
        confirmed; how many deliveries it read."""
        try:
            with work.transaction(), work.cursor() as cur:
                # Takes the swap lock shared (batches run side by side; a rebuild's swap takes
                # it exclusively) and confirms the view locks in the same statement.
                self._confirm_locks(cur, locks)
                # One query for every view's live version (a rebuild's swap, which changes
                # them, waits for the swap lock this batch holds shared).
                live = {v.view: v for v in versions(work) if v.state == "live"}
                held = [live[name] for name in sorted(self.held) if name in live]
                if not held:
                    return 0
                assert self._tracking is not None
                current = positions(cur, held)
                targets = [Target(v, current[v]) for v in held]
                records = read(self._source, cur, min(current.values()), self._batch_size)
                apply_records(cur, self._tracking, targets, records, strict=False)
        except StalePosition as error:
            log.warning("another runner moved a view on (%s); re-reading", error)
            return 0
        if records:
            self.applied += len(records)
            self._clear_failure(held)
        return len(records)

    def _record_failure(self, error: Exception, views: list[str]) -> None:
        """Mark the views failed, with the error, for status and readiness."""
        self._failing = True
        try:
            with psycopg.connect(self._url, autocommit=True, connect_timeout=3) as conn:
                record_failure(conn, views, f"{type(error).__name__}: {error}"[:1000])
        except psycopg.Error:
            log.warning("could not record the projection failure")

    def _clear_failure(self, versions: list[Version]) -> None:
        if not self._failing:
            return
        with psycopg.connect(self._url, autocommit=True) as conn:
            clear_failure(conn, [v.view for v in versions])
        self._failing = False


def _work(database_url: str) -> psycopg.Connection[Any]:
    """The connection batches run on, planning each statement for the tables as they are.

    The views' tables grow from nothing. A cached plan made while one was small (a whole-table
    scan of the roster history to load a few attendees' periods) stayed in use until
    autovacuum's next ANALYZE, up to a minute later, while each batch took longer than the
    last: the live lag reached seconds, and a catch-up from empty views ran at 274/s."""
    conn = psycopg.connect(database_url, application_name=_name())
    conn.execute("SET plan_cache_mode = force_custom_plan")
    conn.commit()
    return conn


def _name() -> str:
    # Shown in pg_stat_activity, so an operator can tell which process holds which view.
    return f"rollcall runner pid={os.getpid()}"
