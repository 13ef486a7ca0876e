"""The roster view: one row per attendee per JTE event, folded by domain.roster."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql

from domain.events import AttendeeEvent
from domain.roster import RosterEntry, apply
from projections.columns import json_text, text
from projections.schema import Version
from projections.view import Key, Poison

_Stored = tuple[RosterEntry, list[str], dict[str, int]]
# JSON with exact decimals both ways: the attendee's fields are untyped, and a number must come
# back as the same Decimal it was (MessagePack would turn it into a string, JSON's default into
# a float), or a row rewritten later would differ from one written once.
_encode_stored: Final = msgspec.json.Encoder(decimal_format="number").encode
_decode_stored: Final = msgspec.json.Decoder(_Stored, float_hook=Decimal).decode

# What `q=` searches: names and email in one text, so "Anna Nowak" finds her too. The API's
# search condition repeats this expression exactly, so the trigram index serves it.
SEARCH_TEXT: Final = (
    "coalesce(first_name, '') || ' ' || coalesce(last_name, '') || ' ' || coalesce(email, '')"
)

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
    # json, not jsonb: stored as written, no conversion on every write (analytics casts it).
    "fields json NOT NULL",
    "last_position bigint NOT NULL",
    "state bytea NOT NULL",
)
_NAMES: Final = [column.split()[0] for column in _COLUMNS]
_TYPES: Final = [column.split()[1] for column in _COLUMNS]
# The staging table holds `fields` as text: psycopg would re-serialise a str given as json.
_STAGE_TYPES: Final = ["text" if kind == "json" else kind for kind in _TYPES]
_STAGE_SELECT: Final = sql.SQL(", ").join(
    sql.SQL("{}::json").format(sql.Identifier(n)) if t == "json" else sql.Identifier(n)
    for n, t in zip(_NAMES, _TYPES, strict=True)
)


class RosterWrite(msgspec.Struct):
    """A batch's roster rows, and which deliveries it added to whose history."""

    entries: list[RosterEntry]
    deliveries: list[tuple[str, str, int]]


class RosterView:
    """Roster tables, their analytics view, and how a batch of events updates them."""

    name: Final = "roster"
    tables: Final = ("roster", "roster_deliveries")

    def ddl(self, version: Version) -> list[sql.Composed]:
        # Free space on each page lets a row's next version stay on it (a "HOT" update).
        return [
            sql.SQL(
                "CREATE TABLE {} ({}, PRIMARY KEY (slug, attendee_id)) WITH (fillfactor = 70)"
            ).format(version.table("roster"), sql.SQL(", ").join(sql.SQL(c) for c in _COLUMNS)),
            # Which deliveries concern each attendee: the attendee's history, in the store.
            sql.SQL(
                "CREATE TABLE {} (slug text NOT NULL, attendee_id text NOT NULL, "
                "position bigint NOT NULL, PRIMARY KEY (slug, attendee_id, position))"
            ).format(version.table("roster_deliveries")),
        ]

    def indexes(self, version: Version) -> list[sql.Composed]:
        table = version.table("roster")
        return [
            # The roster's reading order: by name, then id (ORDER_KEY in service/api.py).
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS {} ON {} (slug, coalesce(lower(last_name), ''), "
                "coalesce(lower(first_name), ''), attendee_id)"
            ).format(sql.Identifier(f"roster_v{version.version}_name"), table),
            # The roster's search text (SEARCH_TEXT in service/api.py), for `q=` with ILIKE.
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gin (({}) gin_trgm_ops)").format(
                sql.Identifier(f"roster_v{version.version}_search"), table, sql.SQL(SEARCH_TEXT)
            ),
        ]

    def analytics(self, version: Version) -> list[tuple[str, sql.Composed]]:
        select = sql.SQL(
            "SELECT slug AS event, attendee_id, status, email, first_name, last_name, role, "
            "company, ticket, added_by_admin, checked_in, paid, amount, currency, payment_method, "
            "paid_at, registered_at, first_seen_at, deleted_at, last_check_in_at, "
            "last_check_out_at, fields::jsonb AS fields FROM {}"
        ).format(version.table("roster"))
        deliveries = sql.SQL("SELECT slug AS event, attendee_id, position FROM {}").format(
            version.table("roster_deliveries")
        )
        return [("roster", select), ("attendee_deliveries", deliveries)]

    def keys(self, events: Sequence[AttendeeEvent]) -> set[Key]:
        return {(e.slug, e.attendee_id) for e in events}

    def load(
        self, cur: psycopg.Cursor[Any], version: Version, keys: list[Key]
    ) -> dict[Key, RosterEntry]:
        return _load(cur, version, keys)

    def fold(
        self, states: dict[Key, RosterEntry], events: Sequence[AttendeeEvent], poison: Poison
    ) -> tuple[dict[Key, RosterEntry], RosterWrite]:
        """The entries of the attendees the events touch, after them, and what to write."""
        entries: dict[Key, RosterEntry] = {}
        for event in events:
            key = (event.slug, event.attendee_id)
            try:
                entries[key] = apply(entries.get(key) or states.get(key), event)
            except Exception as error:
                poison(event, error)
        touched = [(e.slug, e.attendee_id, e.position) for e in events]
        return entries, RosterWrite([entries[key] for key in sorted(entries)], touched)

    def write(self, cur: psycopg.Cursor[Any], version: Version, write: RosterWrite) -> None:
        _store(cur, version, write.entries)
        if write.deliveries:
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[]) "
                    "ON CONFLICT DO NOTHING"
                ).format(version.table("roster_deliveries")),
                [list(column) for column in zip(*write.deliveries, strict=True)],
            )


def _load(cur: psycopg.Cursor[Any], version: Version, keys: list[Key]) -> dict[Key, RosterEntry]:
    if not keys:
        return {}
    rows = cur.execute(
        sql.SQL(
            "SELECT r.state FROM {} r JOIN unnest(%b::text[], %b::text[]) AS k(slug, attendee_id) "
            "USING (slug, attendee_id)"
        ).format(version.table("roster")),
        ([k[0] for k in keys], [k[1] for k in keys]),
    ).fetchall()
    entries = (_decode(row[0]) for row in rows)
    return {(e.slug, e.attendee_id): e for e in entries}


def _store(cur: psycopg.Cursor[Any], version: Version, entries: list[RosterEntry]) -> None:
    """Upsert the entries through a temporary table filled with binary COPY: psycopg formats
    COPY rows in C, where array parameters would be built element by element in Python."""
    if not entries:
        return
    table = version.table("roster")
    stage = sql.Identifier(f"roster_v{version.version}_stage")
    columns = sql.SQL(", ").join(map(sql.Identifier, _NAMES))
    cur.execute(
        sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
            stage,
            sql.SQL(", ").join(
                sql.SQL(f"{n} {t}") for n, t in zip(_NAMES, _STAGE_TYPES, strict=True)
            ),
        )
    )
    with cur.copy(
        sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(stage, columns)
    ) as copy:
        copy.set_types(_STAGE_TYPES)
        for entry in entries:
            copy.write_row(_row(entry))
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = excluded.{0}").format(sql.Identifier(name)) for name in _NAMES[2:]
    )
    cur.execute(
        sql.SQL(
            "INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT (slug, attendee_id) DO UPDATE SET {}"
        ).format(table, columns, _STAGE_SELECT, stage, updates)
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
        _encode_state(entry),
    )


def _ticket(value: object) -> str | None:
    # A ticket may arrive as its name or as an object with one.
    if isinstance(value, dict):
        return text(value.get("name") or value.get("listedName") or value.get("listedNameEn"))
    return text(value)


def _encode_state(entry: RosterEntry) -> bytes:
    """The entry for the `state` column, its per-field orders written once per distinct order:
    a row then stays under PostgreSQL's 2 kB TOAST threshold, which halves the write cost."""
    orders = sorted(set(entry.field_orders.values()))
    index = {order: n for n, order in enumerate(orders)}
    field_order = {name: index[order] for name, order in entry.field_orders.items()}
    return _encode_stored((msgspec.structs.replace(entry, field_orders={}), orders, field_order))


def _decode(state: bytes) -> RosterEntry:
    stored: _Stored = _decode_stored(state)
    entry, orders, field_order = stored
    entry.field_orders = {name: orders[n] for name, n in field_order.items()}
    return entry
