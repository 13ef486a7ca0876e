"""The occupancy view: presence per attendee, the exact step function, per-minute counts and a
summary per JTE event, all maintained from the changes domain.presence computes.

A batch re-reads the moves of each attendee it touches, so a late check-out corrects the stays
it belongs to. The summary's peak is extended cheaply while changes arrive in time order, and
recomputed from the step function when a change lands in the past.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql

from domain.events import AttendeeEvent
from domain.presence import Change, Moves, Presence, add, changes, in_step_order, is_move, presence
from projections.columns import text
from projections.schema import Version

Poison = Callable[[AttendeeEvent, Exception], None]
Key = tuple[str, str]
_encode: Final = msgspec.json.Encoder().encode
_decode: Final = msgspec.json.Decoder(Moves).decode
_COUNTERS: Final = ("check_ins", "check_outs", "repeated_check_ins", "stray_check_outs")


@dataclass
class _Summary:
    """The occupancy row of one JTE event."""

    slug: str
    inside_now: int = 0
    peak: int = 0
    peak_at: datetime | None = None
    check_ins: int = 0
    check_outs: int = 0
    repeated_check_ins: int = 0
    stray_check_outs: int = 0
    ever_inside: int = 0
    last_change_at: datetime | None = None
    added: list[Change] = field(default_factory=list)
    removed: list[Change] = field(default_factory=list)


class OccupancyView:
    """Presence, occupancy changes, per-minute counts and the per-event summary."""

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
                "PRIMARY KEY (slug, attendee_id))"
            ).format(version.table("presence")),
            sql.SQL(
                "CREATE TABLE {} (slug text NOT NULL, attendee_id text NOT NULL, "
                "at timestamptz NOT NULL, delta smallint NOT NULL)"
            ).format(version.table("occupancy_changes")),
            sql.SQL("CREATE INDEX {} ON {} (slug, at, delta)").format(
                sql.Identifier(f"occupancy_changes_v{n}_at"), version.table("occupancy_changes")
            ),
            sql.SQL("CREATE INDEX {} ON {} (slug, attendee_id)").format(
                sql.Identifier(f"occupancy_changes_v{n}_attendee"),
                version.table("occupancy_changes"),
            ),
            sql.SQL(
                "CREATE TABLE {} (slug text NOT NULL, minute timestamptz NOT NULL, "
                "entered integer NOT NULL, exited integer NOT NULL, PRIMARY KEY (slug, minute))"
            ).format(version.table("occupancy_minutes")),
            sql.SQL(
                "CREATE TABLE {} (slug text PRIMARY KEY, inside_now integer NOT NULL, "
                "peak integer NOT NULL, peak_at timestamptz, check_ins integer NOT NULL, "
                "check_outs integer NOT NULL, repeated_check_ins integer NOT NULL, "
                "stray_check_outs integer NOT NULL, ever_inside integer NOT NULL, "
                "last_change_at timestamptz)"
            ).format(version.table("occupancy")),
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
                    "SELECT slug AS event, inside_now, peak, peak_at, check_ins, check_outs, "
                    "repeated_check_ins, stray_check_outs, ever_inside AS unique_attendees_inside "
                    "FROM {}"
                ).format(version.table("occupancy")),
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

    def apply(
        self,
        cur: psycopg.Cursor[Any],
        version: Version,
        events: Sequence[AttendeeEvent],
        poison: Poison,
    ) -> None:
        """Re-read the moves of every attendee the batch touches and store what changed."""
        moving = [e for e in events if is_move(e)]
        if not moving:
            return
        keys = sorted({(e.slug, e.attendee_id) for e in moving})
        before = _load_moves(cur, version, keys)
        after = dict(before)
        for event in moving:
            key = (event.slug, event.attendee_id)
            try:
                after[key] = add(after.get(key), event)
            except Exception as error:
                poison(event, error)
        summaries = _load_summaries(cur, version, sorted({k[0] for k in keys}))
        rewritten: list[Key] = []
        new_changes: list[tuple[Key, Change]] = []
        presences: list[tuple[Moves, Presence]] = []
        for key in keys:
            if key not in after:
                continue
            old = presence(before[key]) if key in before else None
            new = presence(after[key])
            presences.append((after[key], new))
            added, removed = _difference(old, new)
            summary = summaries.setdefault(key[0], _Summary(slug=key[0]))
            _count(summary, old, new, added, removed)
            if removed:
                rewritten.append(key)
                new_changes += [(key, change) for change in changes(new)]
            else:
                new_changes += [(key, change) for change in added]
        _store_presence(cur, version, presences)
        _store_changes(cur, version, rewritten, new_changes)
        _store_minutes(cur, version, summaries.values())
        _store_summaries(cur, version, summaries.values())


def _difference(old: Presence | None, new: Presence) -> tuple[list[Change], list[Change]]:
    """Changes added and removed, as multisets (one attendee may step twice at one instant)."""
    before = Counter(changes(old)) if old else Counter()
    after = Counter(changes(new))
    return list((after - before).elements()), list((before - after).elements())


def _count(
    summary: _Summary,
    old: Presence | None,
    new: Presence,
    added: list[Change],
    removed: list[Change],
) -> None:
    summary.inside_now += int(new.inside) - int(bool(old and old.inside))
    summary.ever_inside += int(new.ever_inside) - int(bool(old and old.ever_inside))
    for name in _COUNTERS:
        delta = getattr(new, name) - (getattr(old, name) if old else 0)
        setattr(summary, name, getattr(summary, name) + delta)
    summary.added += added
    summary.removed += removed


def _load_moves(cur: psycopg.Cursor[Any], version: Version, keys: list[Key]) -> dict[Key, Moves]:
    rows = cur.execute(
        sql.SQL(
            "SELECT p.moves FROM {} p JOIN unnest(%s::text[], %s::text[]) AS k(slug, attendee_id) "
            "USING (slug, attendee_id)"
        ).format(version.table("presence")),
        ([k[0] for k in keys], [k[1] for k in keys]),
    ).fetchall()
    loaded = (_decode(row[0]) for row in rows)
    return {(m.slug, m.attendee_id): m for m in loaded}


def _load_summaries(
    cur: psycopg.Cursor[Any], version: Version, slugs: list[str]
) -> dict[str, _Summary]:
    rows = cur.execute(
        sql.SQL(
            "SELECT slug, inside_now, peak, peak_at, check_ins, check_outs, repeated_check_ins, "
            "stray_check_outs, ever_inside, last_change_at FROM {} WHERE slug = ANY(%s)"
        ).format(version.table("occupancy")),
        (slugs,),
    ).fetchall()
    return {row[0]: _Summary(*row) for row in rows}


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
            "INSERT INTO {} SELECT * FROM unnest(%s::text[], %s::text[], %s::boolean[], "
            "%s::timestamptz[], %s::integer[], %s::integer[], %s::integer[], %s::integer[], "
            "%s::timestamptz[], %s::timestamptz[], %s::timestamptz[], %s::bytea[]) "
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
                "DELETE FROM {} c USING unnest(%s::text[], %s::text[]) AS k(slug, attendee_id) "
                "WHERE c.slug = k.slug AND c.attendee_id = k.attendee_id"
            ).format(table),
            ([k[0] for k in rewritten], [k[1] for k in rewritten]),
        )
    if new_changes:
        cur.execute(
            sql.SQL(
                "INSERT INTO {} SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], "
                "%s::smallint[])"
            ).format(table),
            (
                [k[0] for k, _ in new_changes],
                [k[1] for k, _ in new_changes],
                [c.at for _, c in new_changes],
                [c.delta for _, c in new_changes],
            ),
        )


def _store_minutes(cur: psycopg.Cursor[Any], version: Version, summaries: Any) -> None:
    counts: dict[tuple[str, datetime], list[int]] = defaultdict(lambda: [0, 0])
    for summary in summaries:
        for change, sign in [(c, 1) for c in summary.added] + [(c, -1) for c in summary.removed]:
            minute = change.at.replace(second=0, microsecond=0)
            counts[(summary.slug, minute)][0 if change.delta > 0 else 1] += sign
    if not counts:
        return
    cur.execute(
        sql.SQL(
            "INSERT INTO {0} AS t SELECT * FROM unnest(%s::text[], %s::timestamptz[], "
            "%s::integer[], %s::integer[]) ON CONFLICT (slug, minute) DO UPDATE "
            "SET entered = t.entered + excluded.entered, exited = t.exited + excluded.exited"
        ).format(version.table("occupancy_minutes")),
        (
            [k[0] for k in counts],
            [k[1] for k in counts],
            [v[0] for v in counts.values()],
            [v[1] for v in counts.values()],
        ),
    )
    # A late change can empty a minute; an empty minute is no row, as in a fresh build.
    cur.execute(
        sql.SQL(
            "DELETE FROM {} m USING unnest(%s::text[], %s::timestamptz[]) AS k(slug, minute) "
            "WHERE m.slug = k.slug AND m.minute = k.minute AND m.entered = 0 AND m.exited = 0"
        ).format(version.table("occupancy_minutes")),
        ([k[0] for k in counts], [k[1] for k in counts]),
    )


def _store_summaries(cur: psycopg.Cursor[Any], version: Version, summaries: Any) -> None:
    for summary in summaries:
        if summary.removed or _in_the_past(summary):
            _recompute_peak(cur, version, summary)
        else:
            _extend_peak(summary)
        cur.execute(
            sql.SQL(
                "INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (slug) DO UPDATE SET inside_now = excluded.inside_now, "
                "peak = excluded.peak, peak_at = excluded.peak_at, "
                "check_ins = excluded.check_ins, check_outs = excluded.check_outs, "
                "repeated_check_ins = excluded.repeated_check_ins, "
                "stray_check_outs = excluded.stray_check_outs, "
                "ever_inside = excluded.ever_inside, last_change_at = excluded.last_change_at"
            ).format(version.table("occupancy")),
            (
                summary.slug,
                summary.inside_now,
                summary.peak,
                summary.peak_at,
                summary.check_ins,
                summary.check_outs,
                summary.repeated_check_ins,
                summary.stray_check_outs,
                summary.ever_inside,
                summary.last_change_at,
            ),
        )


def _in_the_past(summary: _Summary) -> bool:
    """Does any new change come at or before the latest change already counted?"""
    if summary.last_change_at is None or not summary.added:
        return False
    return min(change.at for change in summary.added) <= summary.last_change_at


def _extend_peak(summary: _Summary) -> None:
    """All new changes come after every earlier one: continue the running count from now."""
    steps = in_step_order(summary.added)
    running = summary.inside_now - sum(change.delta for change in steps)
    for change in steps:
        running += change.delta
        if running > summary.peak:
            summary.peak, summary.peak_at = running, change.at
    if steps:
        summary.last_change_at = steps[-1].at


def _recompute_peak(cur: psycopg.Cursor[Any], version: Version, summary: _Summary) -> None:
    row = cur.execute(
        sql.SQL(
            "SELECT running, at, last_at FROM (SELECT at, max(at) OVER () AS last_at, "
            "sum(delta) OVER (ORDER BY at, delta ROWS UNBOUNDED PRECEDING) AS running "
            "FROM {} WHERE slug = %s) s ORDER BY running DESC, at LIMIT 1"
        ).format(version.table("occupancy_changes")),
        (summary.slug,),
    ).fetchone()
    if row is None or row[0] <= 0:
        last = row[2] if row else None
        summary.peak, summary.peak_at, summary.last_change_at = 0, None, last
    else:
        summary.peak, summary.peak_at, summary.last_change_at = int(row[0]), row[1], row[2]
