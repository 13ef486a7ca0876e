"""The roster's history by occurrence time: each attendee's roster row as it stood over each
period of time, so `as_of=T` is one indexed query (the rows in force at T) instead of a fold.

A period begins at the occurrence time of one of the attendee's deliveries (receipt time for
one without) and holds the fold of exactly the deliveries that had occurred by then
(domain.roster.advance), so the rows in force at T are the roster a rebuild cut at T makes. A
delivery that arrives out of occurrence order opens its period in the past and joins every
later one; an erasure scrubs them all (service/privacy.py scrubs them at once, too).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql

from domain.events import ERASED, AttendeeEvent
from domain.roster import Period, advance, scrubbed
from projections import roster
from projections.copying import Upsert, copy_into, copy_rows, upsert_into, upsert_rows
from projections.schema import ANALYTICS, Version
from projections.view import Key, Poison, RowsOnly

# The analytics view this one publishes.
ROSTER_HISTORY: Final = "roster_history"
_HISTORY: Final = f"{ANALYTICS}.{ROSTER_HISTORY}"

_NAMES: Final = [*roster.COLUMN_NAMES, "valid_from", "valid_to"]
_STAGE_TYPES: Final = [*roster.STAGE_TYPES, "timestamptz", "timestamptz"]
_STAGE_SELECT: Final = sql.SQL(", ").join(
    [roster.STAGE_SELECT, sql.Identifier("valid_from"), sql.Identifier("valid_to")]
)
_EARLIEST: Final = datetime.min.replace(tzinfo=UTC)


class HistoryWrite(msgspec.Struct):
    """A batch's periods: those folded from the attendee's open period (or from nothing), and
    the attendees whose deliveries reach back before it, folded where their periods are read."""

    periods: list[tuple[Key, list[Period]]]
    late: list[tuple[Key, list[AttendeeEvent]]]


class RosterHistoryView:
    """The history table, its analytics view, and how a batch of events extends it."""

    name: Final = "roster_history"
    tables: Final = ("roster_history",)
    event_types: Final = None  # every event concerns an attendee's row

    def ddl(self, version: Version) -> list[sql.Composed]:
        columns = [*roster.COLUMNS, "valid_from timestamptz NOT NULL", "valid_to timestamptz"]
        return [
            # Free space on each page: closing a period (its valid_to) stays a HOT update.
            sql.SQL(
                "CREATE TABLE {} ({}, PRIMARY KEY (slug, attendee_id, valid_from)) "
                "WITH (fillfactor = 80)"
            ).format(
                version.table("roster_history"), sql.SQL(", ").join(sql.SQL(c) for c in columns)
            )
        ]

    def indexes(self, version: Version) -> list[sql.Composed]:
        # A page as of a moment walks the roster's reading order, keeping the rows then in force.
        return [
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (slug, {})").format(
                sql.Identifier(f"roster_history_v{version.version}_name"),
                version.table("roster_history"),
                sql.SQL(roster.ORDER_KEY),
            )
        ]

    def migrations(self, version: Version) -> list[sql.Composed]:
        return []

    def analytics(self, version: Version) -> list[tuple[str, sql.Composed]]:
        select = sql.SQL(
            "SELECT slug AS event, attendee_id, valid_from, valid_to, status, email, first_name, "
            "last_name, role, company, ticket, added_by_admin, checked_in, paid, amount, "
            "currency, payment_method, paid_at, registered_at, first_seen_at, deleted_at, "
            "last_check_in_at, last_check_out_at, fields::jsonb AS fields FROM {}"
        ).format(version.table("roster_history"))
        return [(ROSTER_HISTORY, select)]

    def keys(self, events: Sequence[AttendeeEvent]) -> set[Key]:
        return {(e.slug, e.attendee_id) for e in events}

    def load(
        self, cur: psycopg.Cursor[Any], version: Version, keys: list[Key]
    ) -> dict[Key, Period]:
        """Each attendee's open period (the one in force now)."""
        if not keys:
            return {}
        rows = cur.execute(
            _statements(version).load, ([k[0] for k in keys], [k[1] for k in keys])
        ).fetchall()
        periods = (Period(since=row[0], entry=roster.decode_state(row[1], row[2])) for row in rows)
        return {(p.entry.slug, p.entry.attendee_id): p for p in periods}

    def fold(
        self, states: dict[Key, Period], events: Sequence[AttendeeEvent], poison: Poison
    ) -> tuple[dict[Key, Period], HistoryWrite]:
        """The periods of the attendees whose deliveries all occurred since their open period;
        the others, whose earlier periods change too, are left to `write`."""
        by_key: dict[Key, list[AttendeeEvent]] = defaultdict(list)
        for event in events:
            by_key[(event.slug, event.attendee_id)].append(event)
        write = HistoryWrite([], [])
        opened: dict[Key, Period] = {}
        for key in sorted(by_key):
            # In store order, as the roster folds them: an erasure scrubs what came before it
            # in that order, and a delivery after it (under a new data key) is kept.
            mine = sorted(by_key[key], key=lambda e: e.position)
            open_period = states.get(key)
            if open_period is not None and (
                min(e.at for e in mine) < open_period.since
                or any(e.event_type == ERASED for e in mine)
            ):
                write.late.append((key, mine))
                continue
            periods = [open_period] if open_period is not None else []
            for event in mine:
                try:
                    periods = advance(periods, event)
                except Exception as error:
                    poison(event, error)
            if periods:
                write.periods.append((key, periods))
                opened[key] = periods[-1]
        return opened, write

    def write(self, cur: psycopg.Cursor[Any], version: Version, write: HistoryWrite) -> None:
        periods = write.periods + _late(cur, version.table("roster_history"), write.late)
        rows = list(_rows(periods))
        if rows:
            upsert_rows(cur, _statements(version).store, rows)

    def bulk(self, version: Version) -> HistoryBulk:
        return HistoryBulk(self, version)


class _Statements(msgspec.Struct, frozen=True):
    """What a live batch sends for one history version, rendered once."""

    load: bytes
    store: Upsert


@lru_cache(maxsize=16)
def _statements(version: Version) -> _Statements:
    table = version.table("roster_history")
    return _Statements(
        load=sql.SQL(
            "SELECT h.valid_from, h.state, h.fields::text FROM {} h "
            "JOIN unnest(%b::text[], %b::text[]) "
            "AS k(slug, attendee_id) USING (slug, attendee_id) WHERE h.valid_to IS NULL"
        )
        .format(table)
        .as_bytes(None),
        store=upsert_into(
            table,
            stage=f"roster_history_v{version.version}_stage",
            columns=_NAMES,
            types=_STAGE_TYPES,
            select=_STAGE_SELECT,
            key=["slug", "attendee_id", "valid_from"],
        ),
    )


def _late(
    cur: psycopg.Cursor[Any], table: sql.Identifier, late: list[tuple[Key, list[AttendeeEvent]]]
) -> list[tuple[Key, list[Period]]]:
    """Fold deliveries that reach back before their attendee's open period into the periods
    from the one then in force on (all of them for an erasure)."""
    if not late:
        return []
    since = [
        _EARLIEST if any(e.event_type == ERASED for e in events) else min(e.at for e in events)
        for _, events in late
    ]
    rows = cur.execute(
        sql.SQL(
            "SELECT h.slug, h.attendee_id, h.valid_from, h.state, h.fields::text FROM {} h "
            "JOIN unnest(%b::text[], %b::text[], %b::timestamptz[]) AS k(slug, attendee_id, since) "
            "USING (slug, attendee_id) WHERE h.valid_to IS NULL OR h.valid_to > k.since "
            "ORDER BY h.slug, h.attendee_id, h.valid_from FOR UPDATE OF h"
        ).format(table),
        ([k[0] for k, _ in late], [k[1] for k, _ in late], since),
    ).fetchall()
    loaded: dict[Key, list[Period]] = defaultdict(list)
    for slug, attendee_id, valid_from, state, fields in rows:
        loaded[(slug, attendee_id)].append(
            Period(since=valid_from, entry=roster.decode_state(state, fields))
        )
    out = []
    for key, events in late:
        periods = loaded[key]
        for event in events:
            try:
                periods = advance(periods, event)
            except Exception:  # noqa: S112 - the roster view dead-letters the same delivery
                continue
        out.append((key, periods))
    return out


class HistoryBulk(RowsOnly):
    """A fresh history filled by a bulk rebuild: each attendee folded once from nothing, so
    every period is new and streamed with COPY."""

    def __init__(self, view: RosterHistoryView, version: Version) -> None:
        self._view = view
        self._version = version
        self._copy = copy_into(version.table("roster_history"), _NAMES, _STAGE_TYPES)

    def add(self, cur: psycopg.Cursor[Any], write: HistoryWrite) -> None:
        if write.late:  # not from nothing: cannot happen in a bulk fill, but stay right
            self._view.write(cur, self._version, write)
            return
        copy_rows(cur, self._copy, _rows(write.periods))


def _rows(periods: list[tuple[Key, list[Period]]]) -> Iterator[tuple[Any, ...]]:
    """The table rows of attendees' periods, each lasting until the attendee's next begins."""
    for _, ps in periods:
        for n, p in enumerate(ps):
            yield (*roster.row(p.entry), p.since, ps[n + 1].since if n + 1 < len(ps) else None)


def source(when: datetime) -> str:
    """A relation of analytics.roster's shape holding the roster as it stood at `when`: the
    rows then in force. `when` is written into the SQL as an ISO time (digits and signs)."""
    stamp = when.astimezone(UTC).isoformat()
    return (
        f"(SELECT * FROM {_HISTORY} WHERE valid_from <= '{stamp}'::timestamptz "
        f"AND (valid_to IS NULL OR valid_to > '{stamp}'::timestamptz))"
    )


def scrub(cur: psycopg.Cursor[Any], version: Version, slug: str, attendee_id: str) -> int:
    """Remove an erased attendee's person from every period of one version now, as the
    erasure's fold does; how many rows it changed."""
    table = version.table("roster_history")
    rows = cur.execute(
        sql.SQL(
            "SELECT valid_from, state, fields::text FROM {} "
            "WHERE slug = %s AND attendee_id = %s FOR UPDATE"
        ).format(table),
        (slug, attendee_id),
    ).fetchall()
    personal = ("email", "first_name", "last_name", "role", "company", "ticket", "added_by_admin")
    for valid_from, state, fields in rows:
        values = dict(
            zip(
                roster.COLUMN_NAMES,
                roster.row(scrubbed(roster.decode_state(bytes(state), fields))),
                strict=True,
            )
        )
        cur.execute(
            sql.SQL(
                "UPDATE {} SET {}, fields = %s::json, state = %s "
                "WHERE slug = %s AND attendee_id = %s AND valid_from = %s"
            ).format(
                table,
                sql.SQL(", ").join(
                    sql.SQL("{} = NULL").format(sql.Identifier(c)) for c in personal
                ),
            ),
            (values["fields"], values["state"], slug, attendee_id, valid_from),
        )
    return len(rows)
