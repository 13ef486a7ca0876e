"""The occupancy view: presence per attendee, the exact step function, per-minute counts and the
counters of each JTE event, all maintained from the changes domain.presence computes.

A batch re-reads the moves of each attendee it touches, so a late check-out corrects the stays
it belongs to. Everything else is additive: counters and per-minute arrivals and departures
take the batch's differences. The peak needs no running state: each minute keeps the highest
count reached within it (relative to its start), recomputed from the exact changes of the
minutes a batch touches, and the peak is the best minute.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql

from domain.events import AttendeeEvent
from domain.presence import Change, Moves, Presence, add, changes, is_move, presence
from projections.columns import text
from projections.schema import Version
from projections.view import Key, Poison

_encode: Final = msgspec.json.Encoder().encode
_decode: Final = msgspec.json.Decoder(Moves).decode
_COUNTERS: Final = ("check_ins", "check_outs", "repeated_check_ins", "stray_check_outs")


class OccupancyWrite(msgspec.Struct, kw_only=True):
    """What one batch changes: presence rows, step-function rows, minutes and counters."""

    presences: list[tuple[Moves, Presence]] = []
    rewritten: list[Key] = []  # attendees whose earlier changes are replaced
    new_changes: list[tuple[Key, Change]] = []
    minutes: dict[tuple[str, datetime], list[int]] = {}  # (slug, minute) -> [entered, exited]
    counters: dict[str, dict[str, int]] = {}  # slug -> counter -> increment


class OccupancyView:
    """Presence, occupancy changes, per-minute counts and the per-event counters."""

    name: Final = "occupancy"
    tables: Final = ("presence", "occupancy_changes", "occupancy_minutes", "occupancy")

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
                "ever_inside integer NOT NULL)"
            ).format(version.table("occupancy")),
        ]

    def indexes(self, version: Version) -> list[sql.Composed]:
        # The latest check-ins of an event, for the dashboard.
        return [
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (slug, last_in_at DESC)").format(
                sql.Identifier(f"presence_v{version.version}_last_in"), version.table("presence")
            )
        ]

    def analytics(self, version: Version) -> list[tuple[str, sql.Composed]]:
        return [
            (
                "presence",
                sql.SQL(
                    "SELECT slug AS event, attendee_id, inside, entered_at, check_ins, "
                    "check_outs, repeated_check_ins, stray_check_outs, first_in_at, last_in_at, "
                    "last_out_at FROM {}"
                ).format(version.table("presence")),
            ),
            (
                "occupancy",
                sql.SQL(
                    "SELECT s.slug AS event, s.inside_now, coalesce(p.peak, 0) AS peak, "
                    "p.peak_at, s.check_ins, s.check_outs, s.repeated_check_ins, "
                    "s.stray_check_outs, s.ever_inside AS unique_attendees_inside FROM {} s "
                    "LEFT JOIN LATERAL ({}) p ON true"
                ).format(version.table("occupancy"), peak_query(version, sql.SQL("s.slug"))),
            ),
            (
                "occupancy_changes",
                sql.SQL("SELECT slug AS event, attendee_id, at, delta FROM {}").format(
                    version.table("occupancy_changes")
                ),
            ),
            (
                "occupancy_timeline",
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
            sql.SQL(
                "SELECT p.moves FROM {} p JOIN unnest(%b::text[], %b::text[]) "
                "AS k(slug, attendee_id) USING (slug, attendee_id)"
            ).format(version.table("presence")),
            ([k[0] for k in keys], [k[1] for k in keys]),
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


def peak_query(version: Version, slug: sql.Composable) -> sql.Composed:
    """The highest occupancy of a JTE event and the first instant it was reached: the best of
    its minutes' (inside at the minute's start + highest count within the minute)."""
    return sql.SQL(
        "SELECT candidate AS peak, max_prefix_at AS peak_at FROM (SELECT max_prefix_at, "
        "sum(entered - exited) OVER (ORDER BY minute) - (entered - exited) + max_prefix "
        "AS candidate FROM {} m WHERE m.slug = {}) c WHERE candidate > 0 "
        "ORDER BY candidate DESC, max_prefix_at LIMIT 1"
    ).format(version.table("occupancy_minutes"), slug)


def _difference(old: Presence | None, new: Presence) -> tuple[list[Change], list[Change]]:
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
    old: Presence | None,
    new: Presence,
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


def _store_presence(
    cur: psycopg.Cursor[Any], version: Version, rows: list[tuple[Moves, Presence]]
) -> None:
    columns = list(
        zip(
            *(
                (
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
                for moves, p in rows
            ),
            strict=True,
        )
    )
    cur.execute(
        sql.SQL(
            "INSERT INTO {} SELECT * FROM unnest(%b::text[], %b::text[], %b::boolean[], "
            "%b::timestamptz[], %b::integer[], %b::integer[], %b::integer[], %b::integer[], "
            "%b::timestamptz[], %b::timestamptz[], %b::timestamptz[], %b::bytea[]) "
            "ON CONFLICT (slug, attendee_id) DO UPDATE SET inside = excluded.inside, "
            "entered_at = excluded.entered_at, check_ins = excluded.check_ins, "
            "check_outs = excluded.check_outs, repeated_check_ins = excluded.repeated_check_ins, "
            "stray_check_outs = excluded.stray_check_outs, first_in_at = excluded.first_in_at, "
            "last_in_at = excluded.last_in_at, last_out_at = excluded.last_out_at, "
            "moves = excluded.moves"
        ).format(version.table("presence")),
        [list(column) for column in columns],
    )


def _store_changes(
    cur: psycopg.Cursor[Any],
    version: Version,
    rewritten: list[Key],
    new_changes: list[tuple[Key, Change]],
) -> None:
    table = version.table("occupancy_changes")
    if rewritten:
        cur.execute(
            sql.SQL(
                "DELETE FROM {} c USING unnest(%b::text[], %b::text[]) AS k(slug, attendee_id) "
                "WHERE c.slug = k.slug AND c.attendee_id = k.attendee_id"
            ).format(table),
            ([k[0] for k in rewritten], [k[1] for k in rewritten]),
        )
    if new_changes:
        cur.execute(
            sql.SQL(
                "INSERT INTO {} SELECT * FROM unnest(%b::text[], %b::text[], %b::timestamptz[], "
                "%b::smallint[])"
            ).format(table),
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
    table = version.table("occupancy_minutes")
    cur.execute(
        sql.SQL(
            "INSERT INTO {0} AS t (slug, minute, entered, exited) SELECT * FROM "
            "unnest(%b::text[], %b::timestamptz[], %b::integer[], %b::integer[]) "
            "ON CONFLICT (slug, minute) DO UPDATE "
            "SET entered = t.entered + excluded.entered, exited = t.exited + excluded.exited"
        ).format(table),
        (slugs, starts, [v[0] for v in minutes.values()], [v[1] for v in minutes.values()]),
    )
    # A late change can empty a minute; an empty minute is no row, as in a fresh build.
    cur.execute(
        sql.SQL(
            "DELETE FROM {} m USING unnest(%b::text[], %b::timestamptz[]) AS k(slug, minute) "
            "WHERE m.slug = k.slug AND m.minute = k.minute AND m.entered = 0 AND m.exited = 0"
        ).format(table),
        (slugs, starts),
    )
    # The highest count within each touched minute, from its exact changes in step order
    # (departures before arrivals at one instant, as domain.presence.in_step_order).
    cur.execute(
        sql.SQL(
            "WITH touched AS (SELECT * FROM unnest(%b::text[], %b::timestamptz[]) "
            "AS t(slug, minute)), steps AS (SELECT t.slug, t.minute, c.at, sum(c.delta) OVER "
            "(PARTITION BY t.slug, t.minute ORDER BY c.at, c.delta ROWS UNBOUNDED PRECEDING) "
            "AS running FROM touched t JOIN {1} c ON c.slug = t.slug AND c.at >= t.minute "
            "AND c.at < t.minute + interval '1 minute'), best AS (SELECT DISTINCT ON "
            "(slug, minute) slug, minute, running, at FROM steps "
            "ORDER BY slug, minute, running DESC, at) "
            "UPDATE {0} m SET max_prefix = b.running, max_prefix_at = b.at FROM best b "
            "WHERE m.slug = b.slug AND m.minute = b.minute"
        ).format(table, version.table("occupancy_changes")),
        (slugs, starts),
    )


def _store_counters(
    cur: psycopg.Cursor[Any], version: Version, counters: dict[str, dict[str, int]]
) -> None:
    names = ("inside_now", *_COUNTERS, "ever_inside")
    rows = [(slug, *(values.get(name, 0) for name in names)) for slug, values in counters.items()]
    cur.executemany(
        sql.SQL(
            "INSERT INTO {0} AS t (slug, {1}) VALUES (%s, {2}) ON CONFLICT (slug) DO UPDATE SET {3}"
        ).format(
            version.table("occupancy"),
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.Placeholder() for _ in names),
            sql.SQL(", ").join(
                sql.SQL("{0} = t.{0} + excluded.{0}").format(sql.Identifier(name)) for name in names
            ),
        ),
        rows,
    )
