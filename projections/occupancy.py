"""The occupancy view: presence per attendee, the exact step function, per-minute counts and the
counters of each JTE event, all maintained from the changes domain.presence computes.

A batch re-reads the moves of each attendee it touches, so a late check-out corrects the stays
it belongs to. Everything else is additive: counters and per-minute arrivals and departures
take the batch's differences. The peak needs no running state: each minute keeps the highest
count reached within it (relative to its start), recomputed from the exact changes of the
minutes a batch touches, and the peak is the best minute, found again for the JTE events a
batch touches and kept in their counters row, so "occupancy now" reads one row.

Analysts ask it who is inside now or was at an instant, the peak, the timeline in buckets, an
attendee's presence and the latest check-ins; each answer is computed here, in SQL, from the
rows the folds wrote.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import date, datetime
from functools import lru_cache
from typing import Any, Final

import asyncpg
import msgspec
import psycopg
from psycopg import sql

from domain.events import AttendeeEvent
from domain.presence import MOVE_TYPES, Change, Moves, add, changes, is_move, presence
from domain.presence import Presence as PresenceState
from projections.columns import text
from projections.copying import copy_into, copy_rows
from projections.roster import ROSTER
from projections.schema import ANALYTICS, INTERNAL, VIEW_VERSIONS, VIEWS_SCHEMA, Version
from projections.view import Key, Poison

_encode: Final = msgspec.json.Encoder().encode
_decode: Final = msgspec.json.Decoder(Moves).decode
# The order of the occupancy function's steps: by instant, and at one instant departures (-1)
# before arrivals (+1), so that a running count is never higher than the number of people
# really inside at the same time.
_STEP_ORDER: Final = "at, delta"
_COUNTERS: Final = ("check_ins", "check_outs", "repeated_check_ins", "stray_check_outs")
# The per-event counters row: sums a batch adds its differences to (entries and exits: the
# minutes' arrivals and departures), and the peak, set again from the minutes after each batch.
_SUMS: Final = ("inside_now", *_COUNTERS, "ever_inside", "entries", "exits")
# What a version made before the row kept them lacks (see _migrate_counters).
_ADDED_COLUMNS: Final = (
    "entries integer NOT NULL DEFAULT 0",
    "exits integer NOT NULL DEFAULT 0",
    "peak integer NOT NULL DEFAULT 0",
    "peak_at timestamptz",
)


class OccupancyWrite(msgspec.Struct, kw_only=True):
    """What one batch changes: presence rows, step-function rows, minutes and counters."""

    presences: list[tuple[Moves, PresenceState]] = []
    rewritten: list[Key] = []  # attendees whose earlier changes are replaced
    new_changes: list[tuple[Key, Change]] = []
    minutes: dict[tuple[str, datetime], list[int]] = {}  # (slug, minute) -> [entered, exited]
    counters: dict[str, dict[str, int]] = {}  # slug -> counter -> increment


# The analytics views this one publishes.
PRESENCE: Final = "presence"
OCCUPANCY: Final = "occupancy"
OCCUPANCY_CHANGES: Final = "occupancy_changes"
OCCUPANCY_TIMELINE: Final = "occupancy_timeline"
_PRESENCE: Final = f"{ANALYTICS}.{PRESENCE}"
_OCCUPANCY: Final = f"{ANALYTICS}.{OCCUPANCY}"
_CHANGES: Final = f"{ANALYTICS}.{OCCUPANCY_CHANGES}"
_TIMELINE: Final = f"{ANALYTICS}.{OCCUPANCY_TIMELINE}"


class OccupancyView:
    """PresenceState, occupancy changes, per-minute counts and the per-event counters."""

    name: Final = "occupancy"
    tables: Final = ("presence", "occupancy_changes", "occupancy_minutes", "occupancy")
    event_types: Final = MOVE_TYPES

    def ddl(self, version: Version) -> list[sql.Composed]:
        n = version.version
        return [
            sql.SQL(
                "CREATE TABLE {} (slug text NOT NULL, attendee_id text NOT NULL, "
                "inside boolean NOT NULL, entered_at timestamptz, check_ins integer NOT NULL, "
                "check_outs integer NOT NULL, repeated_check_ins integer NOT NULL, "
                "stray_check_outs integer NOT NULL, first_in_at timestamptz, "
                "last_in_at timestamptz, last_out_at timestamptz, moves bytea NOT NULL, "
                "PRIMARY KEY (slug, attendee_id)) WITH (fillfactor = 70)"
            ).format(version.table("presence")),
            sql.SQL(
                "CREATE TABLE {} (slug text NOT NULL, attendee_id text NOT NULL, "
                "at timestamptz NOT NULL, delta smallint NOT NULL)"
            ).format(version.table("occupancy_changes")),
            sql.SQL("CREATE INDEX {} ON {} (slug, attendee_id)").format(
                sql.Identifier(f"occupancy_changes_v{n}_attendee"),
                version.table("occupancy_changes"),
            ),
            sql.SQL("CREATE INDEX {} ON {} (slug, at, delta)").format(
                sql.Identifier(f"occupancy_changes_v{n}_at"), version.table("occupancy_changes")
            ),
            sql.SQL(
                "CREATE TABLE {} (slug text NOT NULL, minute timestamptz NOT NULL, "
                "entered integer NOT NULL, exited integer NOT NULL, "
                "max_prefix integer NOT NULL DEFAULT 0, max_prefix_at timestamptz, "
                "PRIMARY KEY (slug, minute))"
            ).format(version.table("occupancy_minutes")),
            sql.SQL(
                "CREATE TABLE {} (slug text PRIMARY KEY, inside_now integer NOT NULL, "
                "check_ins integer NOT NULL, check_outs integer NOT NULL, "
                "repeated_check_ins integer NOT NULL, stray_check_outs integer NOT NULL, "
                "ever_inside integer NOT NULL, {})"
            ).format(version.table("occupancy"), sql.SQL(", ".join(_ADDED_COLUMNS))),
        ]

    def indexes(self, version: Version) -> list[sql.Composed]:
        # The latest check-ins of an event, for the dashboard.
        return [
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (slug, last_in_at DESC)").format(
                sql.Identifier(f"presence_v{version.version}_last_in"), version.table("presence")
            ),
        ]

    def migrations(self, version: Version) -> list[sql.Composed]:
        return [_migrate_counters(version)]

    def analytics(self, version: Version) -> list[tuple[str, sql.Composed]]:
        return [
            (
                PRESENCE,
                sql.SQL(
                    "SELECT slug AS event, attendee_id, inside, entered_at, check_ins, "
                    "check_outs, repeated_check_ins, stray_check_outs, first_in_at, last_in_at, "
                    "last_out_at FROM {}"
                ).format(version.table("presence")),
            ),
            (
                OCCUPANCY,
                sql.SQL(
                    "SELECT slug AS event, inside_now, peak, peak_at, check_ins, check_outs, "
                    "repeated_check_ins, stray_check_outs, ever_inside AS unique_attendees_inside, "
                    "entries, exits FROM {}"
                ).format(version.table("occupancy")),
            ),
            (
                OCCUPANCY_CHANGES,
                sql.SQL("SELECT slug AS event, attendee_id, at, delta FROM {}").format(
                    version.table("occupancy_changes")
                ),
            ),
            (
                OCCUPANCY_TIMELINE,
                sql.SQL(
                    "SELECT slug AS event, minute, entered, exited, sum(entered - exited) "
                    "OVER (PARTITION BY slug ORDER BY minute) AS inside FROM {}"
                ).format(version.table("occupancy_minutes")),
            ),
        ]

    def keys(self, events: Sequence[AttendeeEvent]) -> set[Key]:
        return {(e.slug, e.attendee_id) for e in events if is_move(e)}

    def load(self, cur: psycopg.Cursor[Any], version: Version, keys: list[Key]) -> dict[Key, Moves]:
        if not keys:
            return {}
        rows = cur.execute(
            _statements(version).load, ([k[0] for k in keys], [k[1] for k in keys])
        ).fetchall()
        loaded = (_decode(row[0]) for row in rows)
        return {(m.slug, m.attendee_id): m for m in loaded}

    def fold(
        self, states: dict[Key, Moves], events: Sequence[AttendeeEvent], poison: Poison
    ) -> tuple[dict[Key, Moves], OccupancyWrite]:
        """New moves for the attendees touched, and the differences they make."""
        after = dict(states)
        for event in events:
            if not is_move(event):
                continue
            key = (event.slug, event.attendee_id)
            try:
                after[key] = add(after.get(key), event)
            except Exception as error:
                poison(event, error)
        write = OccupancyWrite()
        for key in sorted(k for k in after if after[k] is not states.get(k)):
            old = presence(states[key]) if key in states else None
            new = presence(after[key])
            write.presences.append((after[key], new))
            added, removed = _difference(old, new)
            _count(write, key[0], old, new, added, removed)
            if removed:
                write.rewritten.append(key)
                write.new_changes += [(key, change) for change in changes(new)]
            else:
                write.new_changes += [(key, change) for change in added]
        return {k: after[k] for k in after if after[k] is not states.get(k)}, write

    def write(self, cur: psycopg.Cursor[Any], version: Version, write: OccupancyWrite) -> None:
        if not write.presences:
            return
        _store_presence(cur, version, write.presences)
        _store_changes(cur, version, write.rewritten, write.new_changes)
        _store_minutes(cur, version, write.minutes)
        _store_counters(cur, version, write.counters)
        _store_peaks(cur, version, write.minutes)

    def bulk(self, version: Version) -> OccupancyBulk:
        return OccupancyBulk(version)


class OccupancyBulk:
    """A fresh occupancy version filled by a bulk rebuild: presence rows and changes streamed
    with binary COPY per batch of attendees; minutes and counters summed in memory (a few per
    minute and JTE event) and written once at the end."""

    def __init__(self, version: Version) -> None:
        self._version = version
        self._presence = copy_into(version.table("presence"), None, _PRESENCE_TYPES)
        self._changes = copy_into(
            version.table("occupancy_changes"), None, ["text", "text", "timestamptz", "int2"]
        )
        self._minutes: dict[tuple[str, datetime], list[int]] = {}
        self._counters: dict[str, dict[str, int]] = {}

    def add(self, cur: psycopg.Cursor[Any], write: OccupancyWrite) -> None:
        if write.rewritten:
            raise ValueError("a bulk fold starts every attendee from nothing")
        presences = (_presence_row(moves, p) for moves, p in write.presences)
        copy_rows(cur, self._presence, presences)
        changes = (
            (slug, attendee_id, change.at, change.delta)
            for (slug, attendee_id), change in write.new_changes
        )
        copy_rows(cur, self._changes, changes)
        self.absorb((write.minutes, write.counters))

    def totals(self) -> tuple[dict[tuple[str, datetime], list[int]], dict[str, dict[str, int]]]:
        return self._minutes, {slug: dict(values) for slug, values in self._counters.items()}

    def absorb(
        self, totals: tuple[dict[tuple[str, datetime], list[int]], dict[str, dict[str, int]]]
    ) -> None:
        minutes, counters = totals
        for key, (entered, exited) in minutes.items():
            counts = self._minutes.setdefault(key, [0, 0])
            counts[0] += entered
            counts[1] += exited
        for slug, values in counters.items():
            mine = self._counters.setdefault(slug, defaultdict(int))
            for name, value in values.items():
                mine[name] += value

    def finish(self, cur: psycopg.Cursor[Any]) -> None:
        _store_minutes(cur, self._version, self._minutes)
        _store_counters(cur, self._version, self._counters)
        _store_peaks(cur, self._version, self._minutes)

    def settle(self) -> list[sql.Composed]:
        return []  # one fold per attendee writes each row once


_PRESENCE_TYPES: Final = [
    "text", "text", "bool", "timestamptz", "int4", "int4", "int4", "int4",
    "timestamptz", "timestamptz", "timestamptz", "bytea",
]  # fmt: skip


def _presence_row(moves: Moves, p: PresenceState) -> tuple[Any, ...]:
    return (
        text(p.slug),
        text(p.attendee_id),
        p.inside,
        p.entered_at,
        p.check_ins,
        p.check_outs,
        p.repeated_check_ins,
        p.stray_check_outs,
        p.first_in_at,
        p.last_in_at,
        p.last_out_at,
        _encode(moves),
    )


def peak_query(version: Version, slug: sql.Composable) -> sql.Composed:
    """The highest occupancy of a JTE event and the first instant it was reached: the best of
    its minutes' (inside at the minute's start + highest count within the minute)."""
    return sql.SQL(
        "SELECT candidate AS peak, max_prefix_at AS peak_at FROM (SELECT max_prefix_at, "
        "sum(entered - exited) OVER (ORDER BY minute) - (entered - exited) + max_prefix "
        "AS candidate FROM {} m WHERE m.slug = {}) c WHERE candidate > 0 "
        "ORDER BY candidate DESC, max_prefix_at LIMIT 1"
    ).format(version.table("occupancy_minutes"), slug)


def _difference(old: PresenceState | None, new: PresenceState) -> tuple[list[Change], list[Change]]:
    """Changes added and removed, as multisets (one attendee may step twice at one instant)."""
    before = changes(old) if old else []
    after = changes(new)
    if after[: len(before)] == before:
        return after[len(before) :], []  # moves arrived in order: the stays only grew
    added, removed = Counter(after) - Counter(before), Counter(before) - Counter(after)
    return list(added.elements()), list(removed.elements())


def _count(
    write: OccupancyWrite,
    slug: str,
    old: PresenceState | None,
    new: PresenceState,
    added: list[Change],
    removed: list[Change],
) -> None:
    counters = write.counters.setdefault(slug, defaultdict(int))
    counters["inside_now"] += int(new.inside) - int(bool(old and old.inside))
    counters["ever_inside"] += int(new.ever_inside) - int(bool(old and old.ever_inside))
    for name in _COUNTERS:
        counters[name] += getattr(new, name) - (getattr(old, name) if old else 0)
    for change, sign in [(c, 1) for c in added] + [(c, -1) for c in removed]:
        minute = change.at.replace(second=0, microsecond=0)
        counts = write.minutes.setdefault((slug, minute), [0, 0])
        counts[0 if change.delta > 0 else 1] += sign
        counters["entries" if change.delta > 0 else "exits"] += sign


def _store_presence(
    cur: psycopg.Cursor[Any], version: Version, rows: list[tuple[Moves, PresenceState]]
) -> None:
    columns = list(zip(*(_presence_row(moves, p) for moves, p in rows), strict=True))
    cur.execute(_statements(version).store_presence, [list(column) for column in columns])


def _store_changes(
    cur: psycopg.Cursor[Any],
    version: Version,
    rewritten: list[Key],
    new_changes: list[tuple[Key, Change]],
) -> None:
    statements = _statements(version)
    if rewritten:
        cur.execute(
            statements.delete_changes,
            ([k[0] for k in rewritten], [k[1] for k in rewritten]),
        )
    if new_changes:
        cur.execute(
            statements.add_changes,
            (
                [k[0] for k, _ in new_changes],
                [k[1] for k, _ in new_changes],
                [c.at for _, c in new_changes],
                [c.delta for _, c in new_changes],
            ),
        )


def _store_minutes(
    cur: psycopg.Cursor[Any], version: Version, minutes: dict[tuple[str, datetime], list[int]]
) -> None:
    if not minutes:
        return
    slugs = [k[0] for k in minutes]
    starts = [k[1] for k in minutes]
    statements = _statements(version)
    cur.execute(
        statements.add_minutes,
        (slugs, starts, [v[0] for v in minutes.values()], [v[1] for v in minutes.values()]),
    )
    cur.execute(statements.drop_empty_minutes, (slugs, starts))
    cur.execute(statements.set_minute_maxima, (slugs, starts))


def _store_counters(
    cur: psycopg.Cursor[Any], version: Version, counters: dict[str, dict[str, int]]
) -> None:
    rows = [(slug, *(values.get(name, 0) for name in _SUMS)) for slug, values in counters.items()]
    cur.executemany(_statements(version).add_counters, rows)


def _store_peaks(
    cur: psycopg.Cursor[Any], version: Version, minutes: dict[tuple[str, datetime], list[int]]
) -> None:
    """Set the peak of the JTE events whose minutes were just written (after their counters:
    a late or removed change can lower it, so it is found again, not added to)."""
    slugs = sorted({slug for slug, _ in minutes})
    if slugs:
        cur.execute(_statements(version).set_peaks, (slugs,))


class _Statements(msgspec.Struct, frozen=True):
    """What a live batch sends for one occupancy version, rendered once."""

    load: bytes
    store_presence: bytes
    delete_changes: bytes
    add_changes: bytes
    add_minutes: bytes
    drop_empty_minutes: bytes
    set_minute_maxima: bytes
    add_counters: bytes
    set_peaks: bytes


@lru_cache(maxsize=16)
def _statements(version: Version) -> _Statements:
    presence, changes = version.table("presence"), version.table("occupancy_changes")
    minutes, counters = version.table("occupancy_minutes"), version.table("occupancy")
    statements = dict(
        load=sql.SQL(
            "SELECT p.moves FROM {} p JOIN unnest(%b::text[], %b::text[]) "
            "AS k(slug, attendee_id) USING (slug, attendee_id)"
        ).format(presence),
        store_presence=sql.SQL(
            "INSERT INTO {} SELECT * FROM unnest(%b::text[], %b::text[], %b::boolean[], "
            "%b::timestamptz[], %b::integer[], %b::integer[], %b::integer[], %b::integer[], "
            "%b::timestamptz[], %b::timestamptz[], %b::timestamptz[], %b::bytea[]) "
            "ON CONFLICT (slug, attendee_id) DO UPDATE SET inside = excluded.inside, "
            "entered_at = excluded.entered_at, check_ins = excluded.check_ins, "
            "check_outs = excluded.check_outs, repeated_check_ins = excluded.repeated_check_ins, "
            "stray_check_outs = excluded.stray_check_outs, first_in_at = excluded.first_in_at, "
            "last_in_at = excluded.last_in_at, last_out_at = excluded.last_out_at, "
            "moves = excluded.moves"
        ).format(presence),
        delete_changes=sql.SQL(
            "DELETE FROM {} c USING unnest(%b::text[], %b::text[]) AS k(slug, attendee_id) "
            "WHERE c.slug = k.slug AND c.attendee_id = k.attendee_id"
        ).format(changes),
        add_changes=sql.SQL(
            "INSERT INTO {} SELECT * FROM unnest(%b::text[], %b::text[], %b::timestamptz[], "
            "%b::smallint[])"
        ).format(changes),
        add_minutes=sql.SQL(
            "INSERT INTO {0} AS t (slug, minute, entered, exited) SELECT * FROM "
            "unnest(%b::text[], %b::timestamptz[], %b::integer[], %b::integer[]) "
            "ON CONFLICT (slug, minute) DO UPDATE "
            "SET entered = t.entered + excluded.entered, exited = t.exited + excluded.exited"
        ).format(minutes),
        # A late change can empty a minute; an empty minute is no row, as in a fresh build.
        drop_empty_minutes=sql.SQL(
            "DELETE FROM {} m USING unnest(%b::text[], %b::timestamptz[]) AS k(slug, minute) "
            "WHERE m.slug = k.slug AND m.minute = k.minute AND m.entered = 0 AND m.exited = 0"
        ).format(minutes),
        # The highest count within each touched minute, from its exact changes in step order.
        # One minute at a time: its changes come in step order from the (slug, at, delta)
        # index, where partitioning all of them by slug sorted them on text (4.9 -> 1.5 ms
        # for ten busy minutes).
        set_minute_maxima=sql.SQL(
            "UPDATE {0} m SET max_prefix = b.running, max_prefix_at = b.at "
            "FROM unnest(%b::text[], %b::timestamptz[]) AS t(slug, minute) "
            "CROSS JOIN LATERAL (SELECT s.at, s.running FROM (SELECT c.at, sum(c.delta) OVER "
            f"(ORDER BY {_STEP_ORDER} ROWS UNBOUNDED PRECEDING) AS running FROM {{1}} c "
            "WHERE c.slug = t.slug AND c.at >= t.minute AND c.at < t.minute + interval '1 minute'"
            ") s ORDER BY s.running DESC, s.at LIMIT 1) b "
            "WHERE m.slug = t.slug AND m.minute = t.minute"
        ).format(minutes, changes),
        add_counters=sql.SQL(
            "INSERT INTO {0} AS t (slug, {1}) VALUES (%s, {2}) ON CONFLICT (slug) DO UPDATE SET {3}"
        ).format(
            counters,
            sql.SQL(", ").join(map(sql.Identifier, _SUMS)),
            sql.SQL(", ").join(sql.Placeholder() for _ in _SUMS),
            sql.SQL(", ").join(
                sql.SQL("{0} = t.{0} + excluded.{0}").format(sql.Identifier(name)) for name in _SUMS
            ),
        ),
        set_peaks=_set_peaks(version, sql.SQL("unnest(%b::text[])")),
    )
    return _Statements(**{name: s.as_bytes(None) for name, s in statements.items()})


def _set_peaks(version: Version, slugs: sql.Composable) -> sql.Composed:
    """Set the counters rows' peak and peak_at by peak_query, for the JTE events `slugs` (a
    relation of one column) lists: 0 and null for an event nobody was ever inside."""
    return sql.SQL(
        "UPDATE {} o SET peak = coalesce(p.peak, 0), peak_at = p.peak_at FROM {} AS k(slug) "
        "LEFT JOIN LATERAL ({}) p ON true WHERE o.slug = k.slug"
    ).format(version.table("occupancy"), slugs, peak_query(version, sql.SQL("k.slug")))


def _migrate_counters(version: Version) -> sql.Composed:
    """Give a version made before the counters row kept entries, exits and the peak those
    columns, with their values from its minutes; a no-op on any other (idempotent)."""
    table, minutes = version.table("occupancy"), version.table("occupancy_minutes")
    names = [column.split()[0] for column in _ADDED_COLUMNS]
    return sql.SQL(
        "DO $do$ BEGIN IF (SELECT count(*) FROM pg_attribute WHERE attrelid = {regclass}::regclass "
        "AND attname = ANY({names}) AND NOT attisdropped) < {count} THEN "
        "ALTER TABLE {table} {add}; "
        "UPDATE {table} o SET entries = m.entered, exits = m.exited FROM (SELECT slug, "
        "sum(entered) AS entered, sum(exited) AS exited FROM {minutes} GROUP BY slug) m "
        "WHERE o.slug = m.slug; {peaks}; END IF; END $do$"
    ).format(
        regclass=sql.Literal(f"{VIEWS_SCHEMA}.occupancy_v{version.version}"),
        names=sql.Literal(names),
        count=sql.Literal(len(names)),
        table=table,
        add=sql.SQL(", ".join(f"ADD COLUMN IF NOT EXISTS {c}" for c in _ADDED_COLUMNS)),
        minutes=minutes,
        peaks=_set_peaks(version, sql.SQL("(SELECT slug FROM {})").format(table)),
    )


# --- Reading ---------------------------------------------------------------------------------


class Presence(msgspec.Struct, frozen=True, kw_only=True):
    """One attendee's presence: inside or not, and the moves counted."""

    inside: bool
    entered_at: datetime | None
    check_ins: int
    check_outs: int
    repeated_check_ins: int
    stray_check_outs: int
    first_in_at: datetime | None
    last_in_at: datetime | None
    last_out_at: datetime | None


class Occupancy(msgspec.Struct, frozen=True, kw_only=True):
    """How many are inside now (or were at `at`), and how the day went up to then.

    entries/exits count stays started and ended; the check-in and check-out delivery counts
    (repeats and strays included) are given for now only, and are null with `at`."""

    event: str
    at: datetime | None
    inside: int
    peak: int
    peak_at: datetime | None
    entries: int
    exits: int
    unique_attendees_inside: int
    check_ins: int | None
    check_outs: int | None
    repeated_check_ins: int | None
    stray_check_outs: int | None


class Bucket(msgspec.Struct, frozen=True, kw_only=True):
    """[start, end): arrivals, departures, and how many were inside at `end`."""

    start: datetime
    end: datetime
    entered: int
    exited: int
    inside: int


class CheckIn(msgspec.Struct, frozen=True, kw_only=True):
    attendee_id: str
    first_name: str | None
    last_name: str | None
    at: datetime
    inside: bool


async def presence_of(pool: asyncpg.Pool, slug: str, attendee_id: str) -> Presence | None:
    """One attendee's presence (None before their first move)."""
    row = await pool.fetchrow(
        "SELECT inside, entered_at, check_ins, check_outs, repeated_check_ins, "
        f"stray_check_outs, first_in_at, last_in_at, last_out_at FROM {_PRESENCE} "
        "WHERE event = $1 AND attendee_id = $2",
        slug,
        attendee_id,
    )
    return Presence(**dict(row)) if row else None


async def presence_as_of(
    pool: asyncpg.Pool, slug: str, attendee_id: str, when: datetime
) -> Presence | None:
    """One attendee's presence from their moves that had occurred by `when` (None before the
    first)."""
    version = await _live(pool)
    if version is None:
        return None
    moves_blob = await pool.fetchval(
        f"SELECT moves FROM {VIEWS_SCHEMA}.presence_v{version} WHERE slug = $1 "
        "AND attendee_id = $2",
        slug,
        attendee_id,
    )
    if moves_blob is None:
        return None
    moves = _decode(moves_blob)
    moves.moves = [m for m in moves.moves if m.at <= when]
    if not moves.moves:
        return None
    state = presence(moves)
    return Presence(**{f: getattr(state, f) for f in Presence.__struct_fields__})


async def _live(pool: asyncpg.Pool) -> int | None:
    """The occupancy view's live version."""
    version = await pool.fetchval(
        f"SELECT version FROM {INTERNAL}.{VIEW_VERSIONS} WHERE view = $1 AND state = 'live'",
        OccupancyView.name,
    )
    return None if version is None else int(version)


_NOW_COLUMNS: Final = (
    "inside_now, peak, peak_at, check_ins, check_outs, repeated_check_ins, stray_check_outs, "
    "unique_attendees_inside"
)
_NOW: Final = f"SELECT {_NOW_COLUMNS}, entries, exits FROM {_OCCUPANCY} WHERE event = $1"
# The same over `analytics.occupancy` as the previous release published it (no entries, exits).
_NOW_BEFORE: Final = (
    f"SELECT {_NOW_COLUMNS}, (SELECT coalesce(sum(entered), 0) FROM {_TIMELINE} t "
    "WHERE t.event = o.event) AS entries, (SELECT coalesce(sum(exited), 0) "
    f"FROM {_TIMELINE} t WHERE t.event = o.event) AS exits FROM {_OCCUPANCY} o WHERE o.event = $1"
)


async def now(pool: asyncpg.Pool, slug: str) -> Occupancy:
    """Inside now, the peak and when, stays started and ended, and the delivery counts: one
    row of the counters table."""
    try:
        row = await pool.fetchrow(_NOW, slug)
    except asyncpg.UndefinedColumnError:
        # Served before the runner's start (ensure_views) migrated the live version.
        row = await pool.fetchrow(_NOW_BEFORE, slug)
    if row is None:
        return _nobody(slug)
    return Occupancy(
        event=slug,
        at=None,
        inside=row["inside_now"],
        peak=row["peak"],
        peak_at=row["peak_at"],
        entries=row["entries"],
        exits=row["exits"],
        unique_attendees_inside=row["unique_attendees_inside"],
        check_ins=row["check_ins"],
        check_outs=row["check_outs"],
        repeated_check_ins=row["repeated_check_ins"],
        stray_check_outs=row["stray_check_outs"],
    )


async def at(pool: asyncpg.Pool, slug: str, when: datetime) -> Occupancy:
    """Inside at `when`, and the stays started and ended and the peak up to then, from the
    exact changes."""
    row = await pool.fetchrow(
        "SELECT coalesce(sum(delta), 0) AS inside, "
        "count(*) FILTER (WHERE delta > 0) AS entries, "
        "count(*) FILTER (WHERE delta < 0) AS exits, "
        "count(DISTINCT attendee_id) FILTER (WHERE delta > 0) AS unique_inside "
        f"FROM {_CHANGES} WHERE event = $1 AND at <= $2",
        slug,
        when,
    )
    peak = await pool.fetchrow(
        f"SELECT running, at FROM (SELECT at, sum(delta) OVER (ORDER BY {_STEP_ORDER} "
        f"ROWS UNBOUNDED PRECEDING) AS running FROM {_CHANGES} "
        "WHERE event = $1 AND at <= $2) s WHERE running > 0 ORDER BY running DESC, at LIMIT 1",
        slug,
        when,
    )
    return Occupancy(
        event=slug,
        at=when,
        inside=row["inside"],
        peak=peak["running"] if peak else 0,
        peak_at=peak["at"] if peak else None,
        entries=row["entries"],
        exits=row["exits"],
        unique_attendees_inside=row["unique_inside"],
        check_ins=None,
        check_outs=None,
        repeated_check_ins=None,
        stray_check_outs=None,
    )


async def as_of(pool: asyncpg.Pool, slug: str, when: datetime) -> Occupancy:
    """The occupancy built from the deliveries that had occurred by `when`: `at` (the prefix
    of every attendee's moves up to `when` makes exactly the changes up to `when`), and the
    delivery counts, from each attendee's moves up to `when` replayed by domain.presence."""
    then = await at(pool, slug, when)
    version = await _live(pool)
    counts = dict.fromkeys(_COUNTERS, 0)
    if version is not None:
        table = f"{VIEWS_SCHEMA}.presence_v{version}"
        rows = await pool.fetch(f"SELECT moves FROM {table} WHERE slug = $1", slug)
        for row in rows:
            moves = _decode(row[0])
            # Moves are in event order, which begins with the time: those by `when` lead.
            moves.moves = [m for m in moves.moves if m.at <= when]
            state = presence(moves)
            for name in _COUNTERS:
                counts[name] += getattr(state, name)
    return msgspec.structs.replace(then, **counts)


async def span(pool: asyncpg.Pool, slug: str) -> tuple[datetime | None, datetime | None]:
    """The first and the last minute in which anyone came or went."""
    row = await pool.fetchrow(
        f"SELECT min(minute), max(minute) FROM {_TIMELINE} WHERE event = $1", slug
    )
    return (row[0], row[1]) if row else (None, None)


async def buckets(pool: asyncpg.Pool, slug: str, bounds: list[datetime]) -> list[Bucket]:
    """Per bucket [bounds[i], bounds[i+1]): arrivals, departures, and how many were inside at
    its end. Bounds on whole minutes are answered from the per-minute table (a day is at most
    1,440 rows); others from the exact changes. Buckets may differ in length (a local day
    across a DST change is 23 or 25 hours)."""
    start, end = bounds[0], bounds[-1]
    whole_minutes = all(t.second == 0 and t.microsecond == 0 for t in bounds)
    source = _TIMELINE if whole_minutes else _CHANGES
    time, entered, exited = (
        ("minute", "entered", "exited")
        if whole_minutes
        else ("at", "(delta > 0)::int", "(delta < 0)::int")
    )
    inside = await pool.fetchval(
        f"SELECT coalesce(sum({entered} - {exited}), 0) FROM {source} "
        f"WHERE event = $1 AND {time} < $2",
        slug,
        start,
    )
    rows = await pool.fetch(
        f"SELECT width_bucket({time}, $2::timestamptz[]) AS n, "
        f"sum({entered})::bigint AS entered, sum({exited})::bigint AS exited FROM {source} "
        f"WHERE event = $1 AND {time} >= $3 AND {time} < $4 GROUP BY n",
        slug,
        bounds,
        start,
        end,
    )
    per_bucket = {row["n"]: (row["entered"], row["exited"]) for row in rows}
    result = []
    for n, (begin, finish) in enumerate(itertools.pairwise(bounds), start=1):
        came, went = per_bucket.get(n, (0, 0))
        inside += came - went
        result.append(Bucket(start=begin, end=finish, entered=came, exited=went, inside=inside))
    return result


async def check_ins(pool: asyncpg.Pool, slug: str, limit: int) -> list[CheckIn]:
    """The latest check-ins, with the names the roster has."""
    rows = await pool.fetch(
        "SELECT p.attendee_id, r.first_name, r.last_name, p.last_in_at, p.inside "
        f"FROM {_PRESENCE} p LEFT JOIN {ANALYTICS}.{ROSTER} r "
        "ON r.event = p.event AND r.attendee_id = p.attendee_id "
        "WHERE p.event = $1 AND p.last_in_at IS NOT NULL ORDER BY p.last_in_at DESC LIMIT $2",
        slug,
        limit,
    )
    return [
        CheckIn(attendee_id=r[0], first_name=r[1], last_name=r[2], at=r[3], inside=r[4])
        for r in rows
    ]


async def inside_now(pool: asyncpg.Pool, slugs: list[str]) -> dict[str, int]:
    """How many are inside now at each JTE event that anyone has entered."""
    rows = await pool.fetch(
        f"SELECT event, inside_now FROM {_OCCUPANCY} WHERE event = ANY($1::text[])", slugs
    )
    return {row[0]: row[1] for row in rows}


def _nobody(slug: str) -> Occupancy:
    """An event nobody has checked in to yet."""
    return Occupancy(
        event=slug, at=None, inside=0, peak=0, peak_at=None, entries=0, exits=0,
        unique_attendees_inside=0, check_ins=0, check_outs=0, repeated_check_ins=0,
        stray_check_outs=0,
    )  # fmt: skip


class Day(msgspec.Struct, frozen=True, kw_only=True):
    """A day (in the time zone asked for) on which anyone came or went."""

    day: date
    entered: int
    exited: int


async def days(pool: asyncpg.Pool, slug: str, zone: str) -> list[Day]:
    """The days with arrivals or departures in time zone `zone` (an IANA name), newest first."""
    rows = await pool.fetch(
        "SELECT (minute AT TIME ZONE $2)::date AS day, sum(entered) AS entered, "
        f"sum(exited) AS exited FROM {_TIMELINE} WHERE event = $1 "
        "GROUP BY 1 HAVING sum(entered) + sum(exited) > 0 ORDER BY 1 DESC",
        slug,
        zone,
    )
    return [Day(day=r["day"], entered=r["entered"], exited=r["exited"]) for r in rows]


async def inside_since(pool: asyncpg.Pool, slug: str, since: datetime) -> tuple[int, int]:
    """Inside now by when their stay began: since `since`, and before it (still marked inside,
    never checked out: from an earlier day)."""
    row = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE inside AND entered_at >= $2) AS recent, "
        "count(*) FILTER (WHERE inside AND (entered_at < $2 OR entered_at IS NULL)) AS earlier "
        f"FROM {_PRESENCE} WHERE event = $1",
        slug,
        since,
    )
    return (row["recent"], row["earlier"]) if row else (0, 0)
