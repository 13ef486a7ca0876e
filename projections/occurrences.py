"""The occurrence index: which deliveries concern which attendee, and when each occurred (its
occurrence time, else its receipt time: the `at` the folds use). Point-in-time answers
(`as_of=`, service/http/api/asof.py) read it to find the deliveries that had occurred by a
moment, then fold only those with the same pure folds as the live views.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql

from domain.events import AttendeeEvent
from projections.columns import text
from projections.copying import copy_into, copy_rows
from projections.schema import Version
from projections.view import Key, Poison, RowsOnly

# The analytics view this one publishes.
OCCURRENCES: Final = "occurrences"


class Occurrence(msgspec.Struct, frozen=True, array_like=True):
    slug: str
    attendee_id: str
    position: int
    event_type: str
    at: Any  # datetime


class OccurrencesView:
    """One row per interpreted delivery: (event, attendee, position, type, occurred at)."""

    name: Final = "occurrences"
    tables: Final = ("occurrences",)
    event_types: Final[frozenset[str] | None] = None  # every interpreted delivery has a row

    def ddl(self, version: Version) -> list[sql.Composed]:
        table = version.table("occurrences")
        return [
            sql.SQL(
                "CREATE TABLE {} (slug text NOT NULL, attendee_id text NOT NULL, "
                "position bigint NOT NULL, event_type text NOT NULL, at timestamptz NOT NULL, "
                "PRIMARY KEY (slug, attendee_id, position))"
            ).format(table)
        ]

    def indexes(self, version: Version) -> list[sql.Composed]:
        # Who had any delivery by a moment, and a type's deliveries by a moment.
        return [
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (slug, event_type, at)").format(
                sql.Identifier(f"occurrences_v{version.version}_type_at"),
                version.table("occurrences"),
            )
        ]

    def migrations(self, version: Version) -> list[sql.Composed]:
        return []

    def analytics(self, version: Version) -> list[tuple[str, sql.Composed]]:
        return [
            (
                OCCURRENCES,
                sql.SQL(
                    "SELECT slug AS event, attendee_id, position, event_type, at FROM {}"
                ).format(version.table("occurrences")),
            )
        ]

    def keys(self, events: Sequence[AttendeeEvent]) -> set[Key]:
        return set()

    def load(self, cur: psycopg.Cursor[Any], version: Version, keys: list[Key]) -> dict[Key, None]:
        return {}

    def fold(
        self, states: dict[Key, None], events: Sequence[AttendeeEvent], poison: Poison
    ) -> tuple[dict[Key, None], list[Occurrence]]:
        rows = [Occurrence(e.slug, e.attendee_id, e.position, e.event_type, e.at) for e in events]
        return {}, rows

    def write(self, cur: psycopg.Cursor[Any], version: Version, rows: list[Occurrence]) -> None:
        if not rows:
            return
        cur.execute(
            _insert(version),
            (
                [text(r.slug) for r in rows],
                [text(r.attendee_id) for r in rows],
                [r.position for r in rows],
                [text(r.event_type) for r in rows],
                [r.at for r in rows],
            ),
        )

    def bulk(self, version: Version) -> OccurrencesBulk:
        return OccurrencesBulk(version)


@lru_cache(maxsize=16)
def _insert(version: Version) -> bytes:
    """A live batch's insert, rendered once per version."""
    return (
        sql.SQL(
            "INSERT INTO {} SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], "
            "%b::text[], %b::timestamptz[]) ON CONFLICT DO NOTHING"
        )
        .format(version.table("occurrences"))
        .as_bytes(None)
    )


class OccurrencesBulk(RowsOnly):
    """A fresh index filled by a bulk rebuild: each delivery is folded once, so its row is
    new and can be streamed with COPY."""

    def __init__(self, version: Version) -> None:
        self._copy = copy_into(
            version.table("occurrences"),
            ["slug", "attendee_id", "position", "event_type", "at"],
            ["text", "text", "int8", "text", "timestamptz"],
        )

    def add(self, cur: psycopg.Cursor[Any], write: list[Occurrence]) -> None:
        copy_rows(
            cur,
            self._copy,
            (
                (text(r.slug), text(r.attendee_id), r.position, text(r.event_type), r.at)
                for r in write
            ),
        )
