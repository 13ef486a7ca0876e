"""Bulk rebuild: fill fresh view versions writing each row once, in parallel processes.

Two phases, each spread over worker processes so PostgreSQL's work and Python's overlap on
every core:

1. Scan: the store is read in position order through the DeliverySource port (so it decodes,
   and may one day decrypt, as the live runner does) in position ranges, one per worker; each
   delivery is interpreted with the current parser and its event is streamed with COPY into an
   unlogged scratch table keyed by (JTE event, attendee id, position).
2. Fold: workers read the scratch table ordered by key (PostgreSQL does the grouping), one per
   view and part of a view (the roster, which reads every event, is split by attendee over the
   workers), fold each attendee from nothing with the view's own fold, and stream the rows out
   with COPY; sums over all attendees (occupancy's minutes and counters) are written last.
   Once every part has committed, the versions' dead letters and tracking positions (the last
   position scanned) are written in one transaction: until then a version stands at position
   0, and the rebuild that resumes it empties and fills it again.

Memory stays bounded by a batch in every process. Rebuilt versions then catch up and swap as
before (projections/rebuild.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from multiprocessing.pool import AsyncResult
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql

from domain.events import AttendeeEvent
from projections.fold import LetterRow, PoisonError, dead_letters
from projections.registry import VIEWS
from projections.schema import VIEWS_SCHEMA, Version
from projections.source import BATCH_BYTES, DeliverySource, occurred_by, record
from projections.tracking import advance, positions, write_letters

BATCH: Final = 5000  # deliveries per read, and events per fold
WORKERS: Final = 2  # the machine rollcall is sized for has two cores
SCRATCH_PREFIX: Final = "rebuild_scratch_"

log = logging.getLogger("rollcall.projections")

# Events keep exact decimals in their attendee objects both ways, as the roster's state does.
_encode: Final = msgspec.json.Encoder(decimal_format="number").encode


def _decoder() -> Callable[[bytes], AttendeeEvent]:
    from decimal import Decimal

    return msgspec.json.Decoder(AttendeeEvent, float_hook=Decimal).decode


class BuildFailed(Exception):
    """A worker process failed (its error, as text: not every driver error pickles)."""


class Counts(msgspec.Struct):
    """How far the bulk phases are, for progress."""

    head: int  # the last position the fill reads
    views: int  # views to fill
    scanned: int = 0  # deliveries scanned
    folded: int = 0  # views filled

    @property
    def position(self) -> int:
        """Where a progress display may say the fill stands: scanning is its first half."""
        done = min(1.0, self.scanned / max(1, self.head)) + self.folded / max(1, self.views)
        return int(self.head * done / 2)


def fill(
    database_url: str,
    source: DeliverySource,
    fresh: Sequence[Version],
    *,
    strict: bool,
    as_of: datetime | None = None,
    workers: int = WORKERS,
    on_progress: Callable[[Counts], None] = lambda counts: None,
) -> int:
    """Fill the fresh (empty, at position 0) versions from the whole store; the position they
    now stand at."""
    scratch = SCRATCH_PREFIX + "_".join(f"{v.view}{v.version}" for v in fresh)
    table = sql.Identifier(VIEWS_SCHEMA, scratch)
    with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor() as cur:
        head = source.head(cur)
        # Unlogged: nothing of it needs to survive a crash (a rerun scans again).
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        cur.execute(
            sql.SQL(
                "CREATE UNLOGGED TABLE {} (slug text NOT NULL, attendee_id text NOT NULL, "
                "event_type text NOT NULL, position bigint NOT NULL, event bytea NOT NULL)"
            ).format(table)
        )
    counts = Counts(
        head=head,
        views=len(fresh) + (workers - 1) * any(VIEWS[v.view].event_types is None for v in fresh),
    )
    on_progress(counts)
    try:
        # Spawned, not forked: a fork would share this process's database connections.
        # Leaving the block terminates the workers, so an interrupt stops them at once (their
        # transactions roll back) instead of waiting for them to finish.
        with multiprocessing.get_context("spawn").Pool(workers, _die_with_parent) as pool:
            step = max(1, -(-head // workers))
            scans = [
                pool.apply_async(
                    _scan,
                    (
                        database_url,
                        source,
                        scratch,
                        lo,
                        min(head, lo + step),
                        as_of,
                        strict,
                        fresh[0].view,
                    ),
                )
                for lo in range(0, head, step)
            ]
            letters: list[LetterRow] = []
            started = time.monotonic()
            for scanned, found in _as_done(scans):
                counts.scanned += scanned
                letters += found
                on_progress(counts)
            log.info("scanned %d deliveries in %.1f s", counts.scanned, time.monotonic() - started)
            # A rerun after an interruption fills the versions again from empty.
            with psycopg.connect(database_url, autocommit=True) as conn:
                for version in fresh:
                    for name in VIEWS[version.view].tables:
                        conn.execute(sql.SQL("TRUNCATE {}").format(version.table(name)))
            # A view that reads every event (the roster) is split by attendee over the workers,
            # longest first, so both cores stay busy to the end.
            tasks = [
                (version, part, workers if VIEWS[version.view].event_types is None else 1)
                for version in sorted(fresh, key=lambda v: VIEWS[v.view].event_types is not None)
                for part in range(workers if VIEWS[version.view].event_types is None else 1)
            ]
            folds = [
                pool.apply_async(_fold, (database_url, version, scratch, part, parts, strict))
                for version, part, parts in tasks
            ]
            dead: dict[Version, list[LetterRow]] = {v: list(letters) for v in fresh}
            for version, part, seconds, found in _as_done(folds):
                dead[version] += found
                counts.folded += 1
                log.info("filled part %d of the %s view in %.1f s", part, version.view, seconds)
                on_progress(counts)
        # The versions are whole: their dead letters and positions, in one transaction.
        with psycopg.connect(database_url) as conn, conn.transaction(), conn.cursor() as cur:
            positions(cur, fresh, lock=True)
            for version in fresh:
                if dead[version]:
                    write_letters(cur, version, dead[version])
                advance(cur, version, head)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    return head


def _die_with_parent() -> None:
    """A worker: SIGTERM on Linux when the rebuild that started it dies (even by SIGKILL), so
    no orphan goes on writing."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PDEATHSIG


def _as_done(results: list[AsyncResult[Any]]) -> Iterator[Any]:
    """Each result as its task finishes; the first failure is raised at once."""
    pending = list(results)
    while pending:
        pending[0].wait(0.05)
        for result in [r for r in pending if r.ready()]:
            pending.remove(result)
            yield result.get()


def _scan(
    database_url: str,
    source: DeliverySource,
    scratch: str,
    after: int,
    upto: int,
    as_of: datetime | None,
    strict: bool,
    first_view: str,
) -> tuple[int, list[LetterRow]]:
    """Interpret the deliveries in (after, upto] into the scratch table; how many were read,
    and the dead letters of the unreadable ones."""
    try:
        return _scan_range(database_url, source, scratch, after, upto, as_of, strict, first_view)
    except PoisonError:
        raise
    except Exception as error:
        raise BuildFailed(f"scanning ({after}, {upto}]: {type(error).__name__}: {error}") from None


def _scan_range(
    database_url: str,
    source: DeliverySource,
    scratch: str,
    after: int,
    upto: int,
    as_of: datetime | None,
    strict: bool,
    first_view: str,
) -> tuple[int, list[LetterRow]]:
    letters: list[LetterRow] = []
    scanned = 0
    copy_sql = sql.SQL(
        "COPY {} (slug, attendee_id, event_type, position, event) FROM STDIN (FORMAT BINARY)"
    ).format(sql.Identifier(VIEWS_SCHEMA, scratch))
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        while after < upto:
            stored = source.read(cur, after, BATCH, BATCH_BYTES)
            if not stored:
                break
            rows = []
            for delivery in stored:
                if delivery.position > upto:
                    break
                scanned += 1
                read = record(delivery)
                if as_of is not None and not occurred_by(read, as_of):
                    continue
                if read.unreadable is not None:
                    message = f"unreadable with the current parser: {read.unreadable}"[:500]
                    if strict:
                        raise PoisonError(
                            f"{first_view}: delivery at position {read.position}: {message}"
                        )
                    letters.append(LetterRow(read.position, read.key, None, None, None, message))
                    continue
                event = read.event
                if event is not None:
                    rows.append(
                        (
                            event.slug,
                            event.attendee_id,
                            event.event_type,
                            event.position,
                            _encode(event),
                        )
                    )
            after = stored[-1].position
            with cur.copy(copy_sql) as copy:
                copy.set_types(["text", "text", "text", "int8", "bytea"])
                for row in rows:
                    copy.write_row(row)
            conn.commit()
    return scanned, letters


def _fold(
    database_url: str, version: Version, scratch: str, part: int, parts: int, strict: bool
) -> tuple[Version, int, float, list[LetterRow]]:
    """Fill one part of a fresh version (its share of the attendees) from the scratch table,
    in one transaction; which, how long it took, and its dead letters."""
    try:
        started = time.monotonic()
        letters = _fold_part(database_url, version, scratch, part, parts, strict)
        return version, part, time.monotonic() - started, letters
    except PoisonError:
        raise
    except Exception as error:
        raise BuildFailed(f"{version.view}: {type(error).__name__}: {error}") from None


def _fold_part(
    database_url: str, version: Version, scratch: str, part: int, parts: int, strict: bool
) -> list[LetterRow]:
    view = VIEWS[version.view]
    decode = _decoder()
    dead: list[LetterRow] = []

    poison = dead_letters(version.view, strict, dead)

    conditions: list[sql.Composable] = [
        sql.SQL("mod(hashtext(attendee_id) & 2147483647, {}) = {}").format(parts, part)
    ]
    params: tuple[Any, ...] = ()
    if view.event_types is not None:
        conditions.append(sql.SQL("event_type = ANY(%s)"))
        params = (sorted(view.event_types),)
    query = sql.SQL(
        'SELECT slug, attendee_id, event FROM {} WHERE {} ORDER BY slug COLLATE "C", '
        'attendee_id COLLATE "C", position'
    ).format(sql.Identifier(VIEWS_SCHEMA, scratch), sql.SQL(" AND ").join(conditions))
    with psycopg.connect(database_url) as conn, conn.transaction(), conn.cursor() as cur:
        # The sort of every event by key: in memory where it fits, else on disk.
        cur.execute("SET LOCAL work_mem = '64MB'")
        bulk = view.bulk(version)
        batch: list[AttendeeEvent] = []
        last_key: tuple[str, str] | None = None
        with conn.cursor(name=f"bulk_{version.view}_{part}") as rows:
            rows.execute(query, params)
            while chunk := rows.fetchmany(BATCH):
                for slug, attendee_id, data in chunk:
                    key = (slug, attendee_id)
                    # A batch ends between two attendees: each is folded whole, from nothing.
                    if key != last_key and len(batch) >= BATCH:
                        bulk.add(cur, view.fold({}, batch, poison)[1])
                        batch = []
                    last_key = key
                    batch.append(decode(data))
        if batch:
            bulk.add(cur, view.fold({}, batch, poison)[1])
        bulk.finish(cur)
    return dead
