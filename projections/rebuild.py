"""Blue/green rebuilds: fill a new version from the first event while the live one keeps serving,
catch up to the head, then swap the `analytics` views and drop the old version in one
transaction. Interrupted, a build stays registered as `building` and a rerun resumes it.

`as_of` builds the views as they stood at a past instant (the deliveries that had occurred by
then: occurrence time, else receipt time) into a schema of their own, leaving the live views
alone; `as_of_builds` lists those schemas and `drop_as_of` removes one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgspec
import psycopg
from psycopg import sql

from projections import bulk
from projections.fold import PoisonError, apply_records
from projections.registry import VIEWS
from projections.runner import ensure_views
from projections.schema import (
    ANALYTICS,
    INTERNAL,
    LOCK_NAMESPACE,
    SWAP_LOCK,
    VIEW_VERSIONS,
    Version,
    as_of,
    build_lock,
    create_version,
    drop_tables,
    live_version,
    note_build_error,
    publish_views,
    set_state,
    try_lock,
    unlock,
    versions,
)
from projections.source import DeliverySource, Record, read
from projections.tracking import ViewTracking, positions
from projections.view import Target

log = logging.getLogger("rollcall.projections")

BATCH: Final = 5000
# "bulk": fresh versions filled once per key in parallel processes (projections/bulk.py), then
# caught up batch by batch; "batches": batch by batch from the first event (the old engine,
# kept to check the bulk one against).
Engine = Literal["bulk", "batches"]


class Progress(msgspec.Struct):
    """Where a build stands, for a progress display."""

    position: int
    start: int
    head: int
    started: float  # time.monotonic() at the start

    @property
    def done(self) -> int:
        return max(0, self.position - self.start)

    @property
    def total(self) -> int:
        return max(1, self.head - self.start)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


class BuildBusy(Exception):
    """Another process is already building one of these views."""


def rebuild(
    database_url: str,
    views: Sequence[str],
    source: DeliverySource,
    *,
    skip_poison: bool = False,
    on_progress: Callable[[Progress], None] = lambda progress: None,
    batch_size: int = BATCH,
    engine: Engine = "bulk",
) -> list[Version]:
    """Build new versions of `views` from the first event and make them live; the new versions."""
    tracking = ensure_views(database_url)
    build = _Build(source, tracking, skip_poison, on_progress, batch_size)
    with psycopg.connect(database_url, autocommit=True) as conn, _build_locks(conn, views):
        building = [_resume_or_create(conn, view) for view in views]
        note_build_error(conn, building, None)
        try:
            if engine == "bulk":
                build.bulk(database_url, conn, building)
            targets = build.fill(conn, building)
            _index(database_url, targets)
            build.swap(conn, targets)
        except PoisonError as error:
            # Kept with the unfinished versions: status shows why the build stopped.
            note_build_error(conn, building, str(error))
            raise
    return [Version(t.version.view, t.version.version, "live") for t in targets]


def build_as_of(
    database_url: str,
    views: Sequence[str],
    source: DeliverySource,
    when: datetime,
    *,
    skip_poison: bool = False,
    on_progress: Callable[[Progress], None] = lambda progress: None,
    batch_size: int = BATCH,
    engine: Engine = "bulk",
) -> str:
    """Build the views as they stood at `when` into a schema of their own; its name."""
    tracking = ensure_views(database_url)
    build = _Build(source, tracking, skip_poison, on_progress, batch_size, as_of=when)
    schema = as_of_schema(when)
    with psycopg.connect(database_url, autocommit=True) as conn:
        created = []
        for view in views:
            with conn.transaction():
                created.append(create_version(conn, view, "building", VIEWS[view].ddl, when))
        if engine == "bulk":
            build.bulk(database_url, conn, created)
        targets = build.fill(conn, created)
        _index(database_url, targets)
        with conn.transaction():
            for target in targets:
                publish_views(conn, schema, VIEWS[target.version.view].analytics(target.version))
                set_state(conn, target.version, "as-of")
    return schema


def as_of_schema(as_of: datetime) -> str:
    return "analytics_as_of_" + as_of.astimezone(UTC).strftime("%Y%m%dt%H%M%Sz")


class AsOfBuild(msgspec.Struct, frozen=True):
    """A schema of views as they stood at a past instant."""

    schema: str
    as_of: datetime
    views: list[str]


def as_of_builds(conn: psycopg.Connection[Any]) -> list[AsOfBuild]:
    """The finished as-of builds, oldest instant first."""
    rows = conn.execute(
        f"SELECT view, as_of FROM {INTERNAL}.{VIEW_VERSIONS} WHERE state = 'as-of' "
        "ORDER BY as_of, view"
    ).fetchall()
    builds: dict[str, AsOfBuild] = {}
    for view, when in rows:
        schema = as_of_schema(when)
        builds.setdefault(schema, AsOfBuild(schema, when, [])).views.append(view)
    return list(builds.values())


def drop_as_of(database_url: str, schema: str) -> AsOfBuild | None:
    """Drop an as-of build: its schema, its versions' tables; None if there is no such build."""
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        build = next((b for b in as_of_builds(conn) if b.schema == schema), None)
        if build is None:
            return None
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        for view in build.views:
            for version in versions(conn, view):
                if version.state == "as-of" and as_of(conn, version) == build.as_of:
                    drop_tables(conn, version, VIEWS[view].tables)
                    set_state(conn, version, "retired")
        return build


@contextmanager
def _build_locks(conn: psycopg.Connection[Any], views: Sequence[str]) -> Iterator[None]:
    taken = []
    try:
        for view in views:
            if not try_lock(conn, build_lock(view)):
                raise BuildBusy(f"a rebuild of the {view} view is already running")
            taken.append(view)
        yield
    finally:
        for view in taken:
            unlock(conn, build_lock(view))


def _resume_or_create(conn: psycopg.Connection[Any], view: str) -> Version:
    """An interrupted build of this view if there is one, else a new version."""
    unfinished = [v for v in versions(conn, view) if v.state == "building"]
    resumable = [v for v in unfinished if as_of(conn, v) is None]
    with conn.transaction():
        if not resumable:
            return create_version(conn, view, "building", VIEWS[view].ddl)
        # An earlier release may have begun it: its batches from here write this release's rows.
        for statement in VIEWS[view].migrations(resumable[-1]):
            conn.execute(statement)
        return resumable[-1]


class _Build:
    """How a build reads and applies: strictly one batch after another (reading ahead or
    writing behind on other threads was measured slower: the GIL serialises the Python work,
    which dominates)."""

    def __init__(
        self,
        source: DeliverySource,
        tracking: ViewTracking,
        skip_poison: bool,
        on_progress: Callable[[Progress], None],
        batch_size: int,
        *,
        as_of: datetime | None = None,
    ) -> None:
        self._source = source
        self._tracking = tracking
        self._strict = not skip_poison
        self._on_progress = on_progress
        self._batch_size = batch_size
        self._as_of = as_of

    def bulk(
        self, database_url: str, conn: psycopg.Connection[Any], building: list[Version]
    ) -> None:
        """Fill the versions still at position 0 (new, or interrupted before their bulk fill
        committed) in bulk; the others resume batch by batch from where they stand."""
        with conn.cursor() as cur:
            current = positions(cur, building)
        fresh = [v for v in building if current[v] == 0]
        if not fresh:
            return
        progress = Progress(position=0, start=0, head=0, started=time.monotonic())

        def report(counts: bulk.Counts) -> None:
            progress.head = counts.head
            progress.position = counts.position
            self._on_progress(progress)

        bulk.fill(
            database_url,
            self._source,
            fresh,
            strict=self._strict,
            as_of=self._as_of,
            on_progress=report,
        )

    def fill(self, conn: psycopg.Connection[Any], building: list[Version]) -> list[Target]:
        """Apply batches until the versions reach the head of the store."""
        with conn.cursor() as cur:
            current = positions(cur, building)
            targets = [Target(v, current[v]) for v in building]
            start = min(current.values())
            top = self._source.head(cur)
            progress = Progress(position=start, start=start, head=top, started=time.monotonic())
            self._on_progress(progress)
            while True:
                with conn.transaction():
                    after = min(t.position for t in targets)
                    records = read(self._source, cur, after, self._batch_size)
                    if not records:
                        break
                    targets = self._apply(cur, targets, records)
                progress.position = records[-1].position
                progress.head = max(progress.head, progress.position)
                self._on_progress(progress)
            progress.head = progress.position = self._source.head(cur)
            self._on_progress(progress)
        return targets

    def swap(self, conn: psycopg.Connection[Any], targets: list[Target]) -> None:
        """Under the exclusive swap lock (the live runner pauses): catch up the last deliveries,
        make the new versions live, point `analytics` at them, and drop the versions they
        replace."""
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, SWAP_LOCK))
            while records := read(self._source, cur, min(t.position for t in targets), BATCH):
                targets = self._apply(cur, targets, records)
            for target in targets:
                view = VIEWS[target.version.view]
                old = live_version(conn, target.version.view)
                set_state(conn, target.version, "live")
                publish_views(conn, ANALYTICS, view.analytics(target.version))
                if old is not None:
                    set_state(conn, old, "retired")
                    drop_tables(conn, old, view.tables)

    def _apply(
        self, cur: psycopg.Cursor[Any], targets: list[Target], records: list[Record]
    ) -> list[Target]:
        return apply_records(
            cur, self._tracking, targets, records, strict=self._strict, as_of=self._as_of
        )


def _index(database_url: str, targets: list[Target]) -> None:
    """Build the readers' indexes once, on the filled tables: cheaper than maintaining them.
    Each view's in order on a connection of its own, two views at a time (PostgreSQL builds
    an index on one core), the largest first."""
    started = time.monotonic()
    work = sorted(targets, key=lambda t: t.version.view != "roster")
    with ThreadPoolExecutor(min(bulk.WORKERS, max(1, len(work)))) as pool:
        for done in [pool.submit(_index_view, database_url, t.version) for t in work]:
            done.result()
    log.info("indexed the new versions in %.1f s", time.monotonic() - started)


def _index_view(database_url: str, version: Version) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        # A trigram index builds in memory up to this much, then merges: less is slower.
        conn.execute("SET maintenance_work_mem = '256MB'")
        for statement in VIEWS[version.view].indexes(version):
            conn.execute(statement)
        # Statistics before the swap: until autovacuum's analyze reaches the new tables, the
        # planner would guess, and a roster page could take a plan that times out.
        for name in VIEWS[version.view].tables:
            conn.execute(sql.SQL("ANALYZE {}").format(version.table(name)))
