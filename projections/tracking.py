"""Tracking: where each view version stands, written with the view's rows in one transaction.

eventsourcing's tracking recorder, extended as the library's own projection examples extend it:
the method that records a batch writes the views' rows, the dead letters and the new tracking
positions in one transaction (the caller's), so each delivery takes effect exactly once, whatever
crashes in between. Before writing, it locks the tracking rows (creating them at 0 for a
version's first batch) and checks they still say where the batch started; if another runner
moved them on, the batch is abandoned rather than applied twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, TypedDict

import psycopg
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from projections.fold import Folded, LetterRow
from projections.registry import VIEWS
from projections.schema import DEAD_LETTERS, INTERNAL, TRACKING_TABLE, Version, may_migrate
from projections.view import Target

_TABLE: Final = sql.Identifier(INTERNAL, TRACKING_TABLE)
_READ: Final = (
    sql.SQL("SELECT application_name, notification_id FROM {} WHERE application_name = ANY(%s)")
    .format(_TABLE)
    .as_bytes(None)
)
_LOCK: Final = _READ + b" FOR UPDATE"
_ADVANCE: Final = (
    sql.SQL(
        "UPDATE {} t SET notification_id = m.position "
        "FROM unnest(%b::text[], %b::bigint[]) AS m(name, position) "
        "WHERE t.application_name = m.name AND t.notification_id < m.position"
    )
    .format(_TABLE)
    .as_bytes(None)
)


class StalePosition(Exception):
    """Another runner moved a view on since this one read its position."""


class ViewTracking(PostgresTrackingRecorder):
    """The views' tracking records (one per view version), and the batch writes that move them."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        super().__init__(datastore, tracking_table_name=TRACKING_TABLE)

    def ensure_table(self, conn: psycopg.Connection[Any]) -> None:
        """The tracking table, created by the library if missing (by a session that migrates
        the schema: the runtime role of `rollcall db setup` finds it made)."""
        if may_migrate(conn):
            with self.datastore:  # its one connection, for as long as the creation takes
                self.create_table()

    def record(self, cur: psycopg.Cursor[Any], folded: Sequence[Folded]) -> list[Target]:
        """Write folded batches and their tracking positions in the caller's transaction, after
        checking no other runner moved the views on since their positions were read; the
        targets, moved on."""
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
            moved.append(Target(version, batch.last))
        advanced = [t for t in moved if t.position > current[t.version]]
        if _advance(cur, advanced) != len(advanced):  # the rows are locked: cannot happen
            raise StalePosition("a tracking row changed under its lock")
        return moved


def view_tracking(database_url: str) -> ViewTracking:
    """The views' tracking recorder for this database (its connection opened only to create
    the table: batches write through the caller's)."""
    datastore = PostgresDatastore(
        **connection_params(database_url), schema=INTERNAL, pool_size=1, lock_timeout=5
    )
    return ViewTracking(datastore)


class ConnectionParams(TypedDict):
    """The separate settings eventsourcing's datastores ask for, instead of a URL."""

    dbname: str
    host: str
    port: str
    user: str
    password: str


def connection_params(database_url: str) -> ConnectionParams:
    """Split a URL into the settings eventsourcing's datastores ask for."""
    params = conninfo_to_dict(database_url)
    return ConnectionParams(
        dbname=str(params.get("dbname") or params.get("user") or "postgres"),
        host=str(params.get("host") or "localhost"),
        port=str(params.get("port") or "5432"),
        user=str(params.get("user") or "postgres"),
        password=str(params.get("password") or ""),
    )


def positions(
    cur: psycopg.Cursor[Any], versions: Sequence[Version], *, lock: bool = False
) -> dict[Version, int]:
    """Each version's tracked position (0 before its first batch); with `lock`, the tracking
    rows are locked until the transaction ends, created at 0 where missing."""
    names = [v.tracking_name for v in versions]
    found = _tracked(cur, names, lock=lock)
    if lock and len(found) < len(names):
        # A version's first batch has no row to lock: without one, two runners could both
        # write from position 0. The row made here (or its insert) makes the second one
        # wait for the first's commit, then see the position it moved to.
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (application_name, notification_id) "
                "SELECT unnest(%s::text[]), 0 ON CONFLICT DO NOTHING"
            ).format(_TABLE),
            ([name for name in names if name not in found],),
        )
        found = _tracked(cur, names, lock=lock)
    return {v: found.get(v.tracking_name, 0) for v in versions}


def _tracked(cur: psycopg.Cursor[Any], names: list[str], *, lock: bool) -> dict[str, int]:
    rows = cur.execute(_LOCK if lock else _READ, (names,)).fetchall()
    return {name: int(position) for name, position in rows}


def _write_letters(cur: psycopg.Cursor[Any], version: Version, letters: list[LetterRow]) -> None:
    cur.executemany(
        sql.SQL(
            "INSERT INTO {} (view, version, position, delivery_key, slug, attendee_id, event_type, "
            "error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
        ).format(sql.Identifier(INTERNAL, DEAD_LETTERS)),
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


def advance(cur: psycopg.Cursor[Any], version: Version, position: int) -> None:
    """Move a version's tracking position on to `position` (its row locked by the caller)."""
    _advance(cur, [Target(version, position)])


def _advance(cur: psycopg.Cursor[Any], targets: list[Target]) -> int:
    """Move the versions' positions on (those behind); how many moved. One statement for
    every view a batch moved: a live batch pays each round trip."""
    if not targets:
        return 0
    cur.execute(
        _ADVANCE,
        ([t.version.tracking_name for t in targets], [t.position for t in targets]),
    )
    return cur.rowcount


def write_letters(cur: psycopg.Cursor[Any], version: Version, letters: list[LetterRow]) -> None:
    """Record dead letters of a version (a delivery recorded twice is recorded once)."""
    _write_letters(cur, version, letters)
