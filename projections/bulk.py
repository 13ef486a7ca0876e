"""Bulk rebuild: fill fresh view versions writing each row once, in parallel processes.

Two phases, each spread over worker processes so PostgreSQL's work and Python's overlap on
every core:

1. Scan: the store is read in position order through the DeliverySource port (which opens the
   sealed bodies, as the live runner does) in position ranges, one per worker; each delivery is
   interpreted with the current parser once, and its event is streamed with COPY into an
   unlogged scratch table keyed by (JTE event, attendee id, position). The event itself goes in
   sealed (AES-256-GCM) under a key made for this fill and held only in its processes' memory:
   the scratch never holds readable personal data, and a kill leaves only ciphertext whose key
   died with it (the next fill drops it).
2. Fold: one worker per share of the attendees reads its events from the scratch table once,
   ordered by key (PostgreSQL does the grouping), opens and decodes each once, folds each
   attendee from nothing with every view's own fold, and streams the rows out with COPY. Rows
   keyed by something several attendees share (the ledger's payment references) may come from
   two workers: the view's Bulk settles them to one per key set-based, before its keys are made.
   Sums over all attendees (occupancy's minutes and counters) come back to the parent, which
   writes them last.
   Once every part has committed, the versions' sums, dead letters and tracking positions (the
   last position scanned) are written in one transaction: until then a version stands at
   position 0, and the rebuild that resumes it empties and fills it again.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from multiprocessing.pool import AsyncResult
from typing import Any, Final
from uuid import UUID

import msgspec
import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import sql

from domain.events import AttendeeEvent
from projections.fold import LetterRow, PoisonError, dead_letters
from projections.registry import VIEWS
from projections.schema import VIEWS_SCHEMA, Version, drop_tables
from projections.source import BATCH_BYTES, DeliverySource, occurred_by, record
from projections.tracking import advance, positions, write_letters
from projections.view import Bulk

BATCH: Final = 5000  # events per fold
# Deliveries per read of the scan: a batch's decoded, opened and interpreted deliveries are
# most of a scanning worker's memory (5,000 took it 20 MB higher than 2,000), and two scan at once.
SCAN_BATCH: Final = 2000
WORKERS: Final = 2  # the machine rollcall is sized for has two cores
SCRATCH_PREFIX: Final = "rebuild_scratch_"

log = logging.getLogger("rollcall.projections")


class _Scratch(msgspec.Struct, array_like=True, frozen=True):
    """An event in the scratch table, but for the key columns beside it (slug, attendee id,
    position): a JSON array, with exact decimals in the attendee object both ways, as the
    roster's state keeps them (MessagePack would turn a Decimal into a string)."""

    event_type: str
    at: datetime
    timed: bool
    order: str
    key: UUID
    attendee: dict[str, Any]


_encode: Final = msgspec.json.Encoder(decimal_format="number").encode


def _scratch(event: AttendeeEvent) -> bytes:
    return _encode(
        _Scratch(event.event_type, event.at, event.timed, event.order, event.key, event.attendee)
    )


def _decoder() -> Callable[[bytes], _Scratch]:
    return msgspec.json.Decoder(_Scratch, float_hook=Decimal).decode


def _nonce(position: int) -> bytes:
    """A scratch row's nonce: its position, unique within a fill (whose key is its own)."""
    return position.to_bytes(12, "big")


class BuildFailed(Exception):
    """A worker process failed (its error, as text: not every driver error pickles)."""


class Counts(msgspec.Struct):
    """How far the bulk phases are, for progress."""

    head: int  # the last position the fill reads
    views: int  # fold parts to fill
    scanned: int = 0  # deliveries scanned
    folded: int = 0  # fold parts filled

    @property
    def position(self) -> int:
        """Where a progress display may say the fill stands: scanning is its first half."""
        done = min(1.0, self.scanned / max(1, self.head)) + self.folded / max(1, self.views)
        return int(self.head * done / 2)


class _Part(msgspec.Struct):
    """What a fold worker hands back: per version, its dead letters and its sums over its
    attendees; and how long it took."""

    letters: dict[Version, list[LetterRow]]
    totals: dict[Version, Any]
    seconds: float


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
    # The scratch rows' key: in this process's and its workers' memory only, never stored.
    key = AESGCM.generate_key(bit_length=256)
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
    counts = Counts(head=head, views=workers)
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
                        key,
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
            bulks = {v: VIEWS[v.view].bulk(v) for v in fresh}
            with psycopg.connect(database_url, autocommit=True) as conn:
                reindex = _unindexed(conn, bulks)
            folds = [
                pool.apply_async(
                    _fold, (database_url, list(fresh), scratch, key, part, workers, strict)
                )
                for part in range(workers)
            ]
            dead: dict[Version, list[LetterRow]] = {v: list(letters) for v in fresh}
            for part, done in enumerate(_as_done(folds)):
                for version in fresh:
                    dead[version] += done.letters[version]
                    bulks[version].absorb(done.totals[version])
                counts.folded += 1
                log.info("filled a part of the views in %.1f s (%d done)", done.seconds, part + 1)
                on_progress(counts)
            started = time.monotonic()
            for _ in _as_done([pool.apply_async(_run, (database_url, s)) for s in reindex]):
                pass
            log.info("indexed the filled tables in %.1f s", time.monotonic() - started)
        # The versions are whole: their sums, dead letters and positions, in one transaction.
        with psycopg.connect(database_url) as conn, conn.transaction(), conn.cursor() as cur:
            positions(cur, fresh, lock=True)
            for version in fresh:
                bulks[version].finish(cur)
                if dead[version]:
                    write_letters(cur, version, dead[version])
                advance(cur, version, head)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    return head


def _unindexed(conn: psycopg.Connection[Any], bulks: Mapping[Version, Bulk]) -> list[list[str]]:
    """Make the versions' tables again, empty, from their DDL, and drop their keys and indexes
    so the folds' COPY writes no index entries; the statements that settle each version's rows
    (Bulk.settle) and make them again, per table. Interrupted anywhere, the rerun makes the
    tables again."""
    again: list[list[str]] = []
    with conn.transaction():
        for version, bulk in bulks.items():
            view = VIEWS[version.view]
            drop_tables(conn, version, view.tables)
            for statement in view.ddl(version):
                conn.execute(statement)
            settle = [statement.as_string(conn) for statement in bulk.settle()]
            for name in view.tables:
                table = f"{VIEWS_SCHEMA}.{name}_v{version.version}"
                # A view's rows are settled before its first table's keys are made.
                statements, settle = settle, []
                keys = conn.execute(
                    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = %s::regclass AND contype = 'p'",
                    (table,),
                ).fetchall()
                for constraint, definition in keys:
                    conn.execute(
                        sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                            version.table(name), sql.Identifier(constraint)
                        )
                    )
                    statements.append(
                        f"ALTER TABLE {version.table(name).as_string(conn)} ADD CONSTRAINT "
                        f"{sql.Identifier(constraint).as_string(conn)} {definition}"
                    )
                indexes = conn.execute(
                    "SELECT indexname, indexdef FROM pg_indexes "
                    "WHERE schemaname = %s AND tablename = %s",
                    (VIEWS_SCHEMA, f"{name}_v{version.version}"),
                ).fetchall()
                for index, definition in indexes:
                    conn.execute(
                        sql.SQL("DROP INDEX {}").format(sql.Identifier(VIEWS_SCHEMA, index))
                    )
                    statements.append(definition)
                if statements:
                    again.append(statements)
    return again


def _run(database_url: str, statements: list[str]) -> None:
    """Run statements in order on a connection of their own (a worker's task)."""
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SET maintenance_work_mem = '128MB'")
            for statement in statements:
                conn.execute(statement.encode())
    except Exception as error:
        raise BuildFailed(f"indexing: {type(error).__name__}: {error}") from None


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
    key: bytes,
    after: int,
    upto: int,
    as_of: datetime | None,
    strict: bool,
    first_view: str,
) -> tuple[int, list[LetterRow]]:
    """Interpret the deliveries in (after, upto] into the scratch table; how many were read,
    and the dead letters of the unreadable ones."""
    try:
        return _scan_range(
            database_url, source, scratch, key, after, upto, as_of, strict, first_view
        )
    except PoisonError:
        raise
    except Exception as error:
        raise BuildFailed(f"scanning ({after}, {upto}]: {type(error).__name__}: {error}") from None


def _scan_range(
    database_url: str,
    source: DeliverySource,
    scratch: str,
    key: bytes,
    after: int,
    upto: int,
    as_of: datetime | None,
    strict: bool,
    first_view: str,
) -> tuple[int, list[LetterRow]]:
    letters: list[LetterRow] = []
    scanned = 0
    seal = AESGCM(key).encrypt
    copy_sql = sql.SQL(
        "COPY {} (slug, attendee_id, event_type, position, event) FROM STDIN (FORMAT BINARY)"
    ).format(sql.Identifier(VIEWS_SCHEMA, scratch))
    # Binary results: a stored state (bytea) comes as itself, not as hex that the server
    # writes and this process reads back (a third of the read's cost).
    with psycopg.connect(database_url) as conn, conn.cursor(binary=True) as cur:
        while after < upto:
            stored = source.read(cur, after, SCAN_BATCH, BATCH_BYTES)
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
                            seal(_nonce(event.position), _scratch(event), None),
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
    database_url: str,
    fresh: list[Version],
    scratch: str,
    key: bytes,
    part: int,
    parts: int,
    strict: bool,
) -> _Part:
    """Fill one part of the fresh versions (its share of the attendees) from the scratch
    table, in one transaction."""
    try:
        started = time.monotonic()
        letters, totals = _fold_part(database_url, fresh, scratch, key, part, parts, strict)
        return _Part(letters, totals, time.monotonic() - started)
    except PoisonError:
        raise
    except Exception as error:
        raise BuildFailed(f"folding part {part}: {type(error).__name__}: {error}") from None


class _Folding:
    """One view's fold in a worker: which events it takes, and the batch it is gathering."""

    def __init__(self, version: Version, strict: bool, letters: list[LetterRow]) -> None:
        self.version = version
        self.view = VIEWS[version.view]
        self.types = self.view.event_types
        self.bulk = self.view.bulk(version)
        self.poison = dead_letters(version.view, strict, letters)
        self.batch: list[AttendeeEvent] = []

    def flush(self, cur: psycopg.Cursor[Any]) -> None:
        if self.batch:
            self.bulk.add(cur, self.view.fold({}, self.batch, self.poison)[1])
            self.batch = []


def _fold_part(
    database_url: str,
    fresh: list[Version],
    scratch: str,
    key: bytes,
    part: int,
    parts: int,
    strict: bool,
) -> tuple[dict[Version, list[LetterRow]], dict[Version, Any]]:
    decode = _decoder()
    open_ = AESGCM(key).decrypt
    letters: dict[Version, list[LetterRow]] = {v: [] for v in fresh}
    folds = [_Folding(v, strict, letters[v]) for v in fresh]
    # The event types the folds read between them (None: every type).
    wanted: list[str] | None = sorted({kind for f in folds for kind in f.types or ()})
    if any(f.types is None for f in folds):
        wanted = None
    types = sql.SQL("") if wanted is None else sql.SQL(" AND event_type = ANY(%s)")
    query = sql.SQL(
        "SELECT slug, attendee_id, position, event FROM {} "
        "WHERE mod(hashtext(attendee_id) & 2147483647, {}) = {}{} "
        'ORDER BY slug COLLATE "C", attendee_id COLLATE "C", position'
    ).format(sql.Identifier(VIEWS_SCHEMA, scratch), parts, part, types)
    params = [] if wanted is None else [wanted]
    with psycopg.connect(database_url) as conn, conn.transaction(), conn.cursor() as cur:
        # The sort of every event by key: in memory where it fits, else on disk.
        cur.execute("SET LOCAL work_mem = '64MB'")
        gathered = 0
        last_key: tuple[str, str] | None = None
        with conn.cursor(name=f"bulk_fold_{part}", binary=True) as rows:
            rows.execute(query, params)
            while chunk := rows.fetchmany(BATCH):
                for slug, attendee_id, position, data in chunk:
                    key_ = (slug, attendee_id)
                    # A batch ends between two attendees: each is folded whole, from nothing.
                    if key_ != last_key and gathered >= BATCH:
                        for f in folds:
                            f.flush(cur)
                        gathered = 0
                    last_key = key_
                    kept = decode(open_(_nonce(position), data, None))
                    kind = kept.event_type
                    event = AttendeeEvent(
                        slug=slug,
                        attendee_id=attendee_id,
                        event_type=kind,
                        at=kept.at,
                        timed=kept.timed,
                        order=kept.order,
                        position=position,
                        key=kept.key,
                        attendee=kept.attendee,
                    )
                    for f in folds:
                        if f.types is None or kind in f.types:
                            f.batch.append(event)
                    gathered += 1
        for f in folds:
            f.flush(cur)
    return letters, {f.version: f.bulk.totals() for f in folds}
