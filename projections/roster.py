"""The roster view: one row per attendee per JTE event, folded by domain.roster."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql

from domain.events import AttendeeEvent
from domain.roster import RosterEntry, apply
from projections.columns import json_text, text
from projections.schema import Version

Poison = Callable[[AttendeeEvent, Exception], None]
_encode: Final = msgspec.json.Encoder(decimal_format="number").encode
_decode: Final = msgspec.json.Decoder(RosterEntry).decode

_COLUMNS: Final = (
    "slug text NOT NULL",
    "attendee_id text NOT NULL",
    "status text NOT NULL",
    "email text",
    "first_name text",
    "last_name text",
    "role text",
    "company text",
    "ticket text",
    "added_by_admin boolean",
    "checked_in boolean NOT NULL",
    "paid boolean NOT NULL",
    "amount numeric",
    "currency text",
    "payment_method text",
    "paid_at timestamptz",
    "registered_at timestamptz",
    "first_seen_at timestamptz NOT NULL",
    "deleted_at timestamptz",
    "last_check_in_at timestamptz",
    "last_check_out_at timestamptz",
    "fields jsonb NOT NULL",
    "last_position bigint NOT NULL",
    "state bytea NOT NULL",
)
_NAMES: Final = [column.split()[0] for column in _COLUMNS]
_TYPES: Final = [column.split()[1] for column in _COLUMNS]


class RosterView:
    """Roster tables, their analytics view, and how a batch of events updates them."""

    name: Final = "roster"
    tables: Final = ("roster",)

    def ddl(self, version: Version) -> list[sql.Composed]:
        table = version.table("roster")
        index = sql.Identifier(f"roster_v{version.version}_name")
        return [
            sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY (slug, attendee_id))").format(
                table, sql.SQL(", ").join(sql.SQL(c) for c in _COLUMNS)
            ),
            sql.SQL(
                "CREATE INDEX {} ON {} (slug, lower(last_name), lower(first_name), attendee_id)"
            ).format(index, table),
        ]

    def analytics(self, version: Version) -> list[tuple[str, sql.Composed]]:
        select = sql.SQL(
            "SELECT slug AS event, attendee_id, status, email, first_name, last_name, role, "
            "company, ticket, added_by_admin, checked_in, paid, amount, currency, payment_method, "
            "paid_at, registered_at, first_seen_at, deleted_at, last_check_in_at, "
            "last_check_out_at, fields FROM {}"
        ).format(version.table("roster"))
        return [("roster", select)]

    def apply(
        self,
        cur: psycopg.Cursor[Any],
        version: Version,
        events: Sequence[AttendeeEvent],
        poison: Poison,
    ) -> None:
        """Fold the events into the rows of the attendees they touch."""
        keys = sorted({(e.slug, e.attendee_id) for e in events})
        entries = _load(cur, version, keys)
        for event in events:
            key = (event.slug, event.attendee_id)
            try:
                entries[key] = apply(entries.get(key), event)
            except Exception as error:
                poison(event, error)
        _store(cur, version, [entries[key] for key in keys if key in entries])


def _load(
    cur: psycopg.Cursor[Any], version: Version, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], RosterEntry]:
    if not keys:
        return {}
    rows = cur.execute(
        sql.SQL(
            "SELECT r.state FROM {} r JOIN unnest(%s::text[], %s::text[]) AS k(slug, attendee_id) "
            "USING (slug, attendee_id)"
        ).format(version.table("roster")),
        ([k[0] for k in keys], [k[1] for k in keys]),
    ).fetchall()
    entries = (_decode(row[0]) for row in rows)
    return {(e.slug, e.attendee_id): e for e in entries}


def _store(cur: psycopg.Cursor[Any], version: Version, entries: list[RosterEntry]) -> None:
    if not entries:
        return
    columns = list(zip(*(_row(entry) for entry in entries), strict=True))
    arrays = sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(kind)) for kind in _TYPES)
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = excluded.{0}").format(sql.Identifier(name)) for name in _NAMES[2:]
    )
    cur.execute(
        sql.SQL(
            "INSERT INTO {} ({}) SELECT * FROM unnest({}) "
            "ON CONFLICT (slug, attendee_id) DO UPDATE SET {}"
        ).format(
            version.table("roster"),
            sql.SQL(", ").join(map(sql.Identifier, _NAMES)),
            arrays,
            updates,
        ),
        [list(column) for column in columns],
    )


def _row(entry: RosterEntry) -> tuple[Any, ...]:
    fields = entry.fields
    return (
        text(entry.slug),
        text(entry.attendee_id),
        entry.status,
        text(fields.get("email")),
        text(fields.get("firstName")),
        text(fields.get("lastName")),
        text(fields.get("role")) or None,
        text(fields.get("company")),
        _ticket(fields.get("ticket")),
        fields.get("addedByAdmin") if isinstance(fields.get("addedByAdmin"), bool) else None,
        entry.inside,
        entry.paid,
        entry.amount,
        entry.currency,
        text(entry.method),
        entry.paid_at,
        entry.registered_at,
        entry.first_seen_at,
        entry.deleted_at if entry.status == "deleted" else None,
        entry.last_check_in_at,
        entry.last_check_out_at,
        json_text(fields),
        entry.last_position,
        _encode(entry),
    )


def _ticket(value: object) -> str | None:
    # A ticket may arrive as its name or as an object with one.
    if isinstance(value, dict):
        return text(value.get("name") or value.get("listedName") or value.get("listedNameEn"))
    return text(value)
