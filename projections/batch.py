"""One batch, one transaction: every target view's changes and its new tracking position.

Because the view rows and the tracking position commit together, each event takes effect
exactly once, whatever crashes in between. Before writing, the batch locks the tracking rows
and checks they still say where this runner thinks the views are; if another runner moved
them on, the batch is abandoned rather than applied twice.
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
from projections.schema import INTERNAL, TRACKING_TABLE, Version
from projections.source import Record
from service.database import connection_params


class View(Protocol):
    """What a view module provides: its tables, its analytics views, and its fold."""

    @property
    def name(self) -> str: ...

    @property
    def tables(self) -> tuple[str, ...]: ...

    def ddl(self, version: Version) -> list[sql.Composed]: ...

    def analytics(self, version: Version) -> list[tuple[str, sql.Composed]]: ...

    def apply(
        self,
        cur: psycopg.Cursor[Any],
        version: Version,
        events: Sequence[AttendeeEvent],
        poison: Callable[[AttendeeEvent, Exception], None],
    ) -> None: ...


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
    """eventsourcing's tracking recorder for the views, its table created if missing."""
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
    recorder.create_table()
    datastore.close()
    return recorder


def positions(
    cur: psycopg.Cursor[Any], versions: Sequence[Version], *, lock: bool = False
) -> dict[Version, int]:
    """Each version's tracked position (0 before its first batch)."""
    names = [v.tracking_name for v in versions]
    rows = cur.execute(
        sql.SQL(
            "SELECT application_name, notification_id FROM {} WHERE application_name = ANY(%s)"
            + (" FOR UPDATE" if lock else "")
        ).format(sql.Identifier(INTERNAL, TRACKING_TABLE)),
        (names,),
    ).fetchall()
    found = {name: int(position) for name, position in rows}
    return {v: found.get(v.tracking_name, 0) for v in versions}


def apply_records(
    cur: psycopg.Cursor[Any],
    recorder: PostgresTrackingRecorder,
    targets: Sequence[Target],
    records: Sequence[Record],
    *,
    strict: bool,
    as_of: datetime | None = None,
) -> list[Target]:
    """Apply records to every target inside the caller's transaction; the targets, moved on."""
    if not records:
        return list(targets)
    last = records[-1].position
    current = positions(cur, [t.version for t in targets], lock=True)
    moved = []
    for target in targets:
        if current[target.version] != target.position:
            raise StalePosition(f"{target.version.tracking_name} is at {current[target.version]}")
        if target.position >= last:
            moved.append(target)
            continue
        relevant = [
            r
            for r in records
            if r.position > target.position and (as_of is None or r.received_at <= as_of)
        ]
        _apply_view(cur, target.version, relevant, strict=strict)
        recorder._insert_tracking(cur, Tracking(target.version.tracking_name, last))
        moved.append(Target(target.version, last))
    return moved


def _apply_view(
    cur: psycopg.Cursor[Any], version: Version, records: list[Record], *, strict: bool
) -> None:
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

    for record in records:
        if record.unreadable is not None:
            message = f"unreadable with the current parser: {record.unreadable}"[:500]
            if strict:
                raise PoisonError(
                    f"{version.view}: delivery at position {record.position}: {message}"
                )
            letters.append(LetterRow(record.position, record.key, None, None, None, message))
    events = [r.event for r in records if r.event is not None]
    VIEWS[version.view].apply(cur, version, events, poison)
    if letters:
        _write_letters(cur, version, letters)


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
