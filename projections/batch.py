"""One batch, one transaction: every target view's changes and its new tracking position.

Because the view rows and the tracking position commit together, each event takes effect
exactly once, whatever crashes in between. Before writing, the batch locks the tracking rows
(creating them at 0 for a version's first batch) and checks they still say where this runner
thinks the views are; if another runner moved them on, the batch is abandoned rather than
applied twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, Protocol

import msgspec
import psycopg
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg import sql

from domain.events import AttendeeEvent
from projections.occupancy import OccupancyView
from projections.payments import PaymentsView
from projections.roster import RosterView
from projections.schema import INTERNAL, TRACKING_TABLE, Version, may_migrate
from projections.source import Record
from service.eventstore.database import connection_params


class View(Protocol):
    """What a view module provides: its tables, its analytics views, and its fold."""

    @property
    def name(self) -> str: ...

    @property
    def tables(self) -> tuple[str, ...]: ...

    def ddl(self, version: Version) -> list[sql.Composed]:
        """Tables, and the indexes folding needs."""
        ...

    def indexes(self, version: Version) -> list[sql.Composed]:
        """Indexes for readers: created with a live version, or once a rebuild has filled one."""
        ...

    def analytics(self, version: Version) -> list[tuple[str, sql.Composed]]: ...

    def keys(self, events: Sequence[AttendeeEvent]) -> set[tuple[str, str]]:
        """The (slug, attendee id) whose stored state the fold of these events needs."""
        ...

    def load(
        self, cur: psycopg.Cursor[Any], version: Version, keys: list[tuple[str, str]]
    ) -> dict[tuple[str, str], Any]:
        """Those states as stored."""
        ...

    def fold(
        self,
        states: dict[tuple[str, str], Any],
        events: Sequence[AttendeeEvent],
        poison: Callable[[AttendeeEvent, Exception], None],
    ) -> tuple[dict[tuple[str, str], Any], Any]:
        """The new states of the keys the events touched, and what to write."""
        ...

    def write(self, cur: psycopg.Cursor[Any], version: Version, write: Any) -> None:
        """Store a fold's result."""
        ...


VIEWS: Final[dict[str, View]] = {
    view.name: view for view in (RosterView(), OccupancyView(), PaymentsView())
}


class Target(msgspec.Struct, frozen=True):
    """A view version and the position it has applied up to."""

    version: Version
    position: int


class PoisonError(Exception):
    """In a strict build, an event a view cannot apply stops the build."""


class StalePosition(Exception):
    """Another runner moved a view on since this one read its position."""


class LetterRow(msgspec.Struct, frozen=True):
    position: int
    key: Any
    slug: str | None
    attendee_id: str | None
    event_type: str | None
    error: str


def tracking_recorder(database_url: str) -> PostgresTrackingRecorder:
    """eventsourcing's tracking recorder for the views, its table created if missing (by a
    session that migrates the schema: the runtime role of `rollcall db setup` finds it made)."""
    params = connection_params(database_url)
    datastore = PostgresDatastore(
        dbname=params["dbname"],
        host=params["host"],
        port=params["port"],
        user=params["user"],
        password=params["password"],
        schema=INTERNAL,
        pool_size=1,
        lock_timeout=5,
    )
    recorder = PostgresTrackingRecorder(datastore, tracking_table_name=TRACKING_TABLE)
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate = may_migrate(conn)
    if migrate:
        recorder.create_table()
    datastore.close()
    return recorder


def positions(
    cur: psycopg.Cursor[Any], versions: Sequence[Version], *, lock: bool = False
) -> dict[Version, int]:
    """Each version's tracked position (0 before its first batch); with `lock`, the tracking
    rows are locked until the transaction ends, created at 0 where missing."""
    names = [v.tracking_name for v in versions]
    found = _tracked(cur, names, lock=lock)
    if lock and len(found) < len(names):
        # A version's first batch has no row to lock: without one, two runners could both
        # write from position 0. The row made here (or its insert) makes the second one wait
        # for the first's commit, then see the position it moved to.
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (application_name, notification_id) "
                "SELECT unnest(%s::text[]), 0 ON CONFLICT DO NOTHING"
            ).format(sql.Identifier(INTERNAL, TRACKING_TABLE)),
            ([name for name in names if name not in found],),
        )
        found = _tracked(cur, names, lock=lock)
    return {v: found.get(v.tracking_name, 0) for v in versions}


def _tracked(cur: psycopg.Cursor[Any], names: list[str], *, lock: bool) -> dict[str, int]:
    rows = cur.execute(
        sql.SQL(
            "SELECT application_name, notification_id FROM {} WHERE application_name = ANY(%s)"
            + (" FOR UPDATE" if lock else "")
        ).format(sql.Identifier(INTERNAL, TRACKING_TABLE)),
        (names,),
    ).fetchall()
    return {name: int(position) for name, position in rows}


class Folded(msgspec.Struct):
    """One view's share of a batch, folded and ready to write."""

    target: Target
    last: int
    states: dict[tuple[str, str], Any]
    write: Any
    letters: list[LetterRow]


def apply_records(
    cur: psycopg.Cursor[Any],
    recorder: PostgresTrackingRecorder,
    targets: Sequence[Target],
    records: Sequence[Record],
    *,
    strict: bool,
    as_of: datetime | None = None,
) -> list[Target]:
    """Fold and write records for every target inside the caller's transaction; the targets,
    moved on."""
    folded = [
        fold_records(
            target,
            records,
            lambda version, keys: VIEWS[version.view].load(cur, version, keys),
            strict=strict,
            as_of=as_of,
        )
        for target in targets
    ]
    return write_folded(cur, recorder, folded)


Loader = Callable[[Version, list[tuple[str, str]]], dict[tuple[str, str], Any]]


def fold_records(
    target: Target,
    records: Sequence[Record],
    load: Loader,
    *,
    strict: bool,
    as_of: datetime | None = None,
) -> Folded:
    """Fold the records after the target's position (received by `as_of`, if given)."""
    version = target.version
    last = records[-1].position if records else target.position
    relevant = [
        r
        for r in records
        if r.position > target.position and (as_of is None or r.received_at <= as_of)
    ]
    letters: list[LetterRow] = []

    def poison(event: AttendeeEvent, error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"[:500]
        if strict:
            raise PoisonError(
                f"{version.view}: delivery at position {event.position} cannot apply: {message}"
            ) from error
        letters.append(
            LetterRow(
                event.position, event.key, event.slug, event.attendee_id, event.event_type, message
            )
        )

    for record in relevant:
        if record.unreadable is not None:
            message = f"unreadable with the current parser: {record.unreadable}"[:500]
            if strict:
                raise PoisonError(
                    f"{version.view}: delivery at position {record.position}: {message}"
                )
            letters.append(LetterRow(record.position, record.key, None, None, None, message))
    view = VIEWS[version.view]
    events = [r.event for r in relevant if r.event is not None]
    states = load(version, sorted(view.keys(events)))
    new_states, write = view.fold(states, events, poison)
    return Folded(target, max(last, target.position), new_states, write, letters)


def write_folded(
    cur: psycopg.Cursor[Any], recorder: PostgresTrackingRecorder, folded: Sequence[Folded]
) -> list[Target]:
    """Write folded batches and their tracking positions, after checking no other runner moved
    the views on since their positions were read; the targets, moved on."""
    current = positions(cur, [f.target.version for f in folded], lock=True)
    moved = []
    for batch in folded:
        version = batch.target.version
        if current[version] != batch.target.position:
            raise StalePosition(f"{version.tracking_name} is at {current[version]}")
        if batch.last <= batch.target.position:
            moved.append(batch.target)
            continue
        VIEWS[version.view].write(cur, version, batch.write)
        if batch.letters:
            _write_letters(cur, version, batch.letters)
        recorder._insert_tracking(cur, Tracking(version.tracking_name, batch.last))
        moved.append(Target(version, batch.last))
    return moved


def _write_letters(cur: psycopg.Cursor[Any], version: Version, letters: list[LetterRow]) -> None:
    cur.executemany(
        sql.SQL(
            "INSERT INTO {} (view, version, position, delivery_key, slug, attendee_id, event_type, "
            "error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
        ).format(sql.Identifier(INTERNAL, "dead_letters")),
        [
            (
                version.view,
                version.version,
                row.position,
                row.key,
                row.slug,
                row.attendee_id,
                row.event_type,
                row.error,
            )
            for row in letters
        ],
    )
