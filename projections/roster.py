"""The roster view: one row per attendee per JTE event, folded by domain.roster, and what
analysts ask of it (pages by name, search, CSV, one attendee)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final, Literal

import asyncpg
import msgspec
import psycopg
from psycopg import sql

from domain.events import ERASED, AttendeeEvent
from domain.roster import RosterEntry, apply, apply_owned, scrubbed
from projections.columns import json_text_exact, text
from projections.copying import Upsert, copy_into, copy_rows, upsert_into, upsert_rows
from projections.schema import ANALYTICS, VIEWS_SCHEMA, Version
from projections.view import Key, Poison, RowsOnly

# The entry without its field orders; the distinct orders; each field's, as an index into
# them: a list in the order of the entry's fields, or (where the two differ, and in a state
# written before 2026-12-01) a dict by field name.
_Stored = tuple[RosterEntry, list[str], list[int] | dict[str, int]]
# JSON with exact decimals both ways: the attendee's fields are untyped, and a number must come
# back as the same Decimal it was (MessagePack would turn it into a string, JSON's default into
# a float), or a row rewritten later would differ from one written once.
_encode_stored: Final = msgspec.json.Encoder(decimal_format="number").encode
_decode_stored: Final = msgspec.json.Decoder(_Stored, float_hook=Decimal).decode
_decode_fields: Final = msgspec.json.Decoder(dict[str, Any], float_hook=Decimal).decode

# The analytics views this one publishes.
ROSTER: Final = "roster"
ATTENDEE_DELIVERIES: Final = "attendee_deliveries"
ROSTER_SEARCH: Final = "roster_search"
ROSTER_FIELDS: Final = "roster_fields"
ROSTER_FIELD_NAMES: Final = "roster_field_names"
_ROSTER: Final = f"{ANALYTICS}.{ROSTER}"
ROSTER_RELATION: Final = _ROSTER  # what the reading functions read unless given another
_SEARCH: Final = f"{ANALYTICS}.{ROSTER_SEARCH}"
_FIELD_NAMES: Final = f"{ANALYTICS}.{ROSTER_FIELD_NAMES}"

# What `q=` searches: names and email in one text, so "Anna Nowak" finds her too. The index
# and the search condition use this very expression, so the trigram index serves it.
SEARCH_TEXT: Final = (
    "coalesce(first_name, '') || ' ' || coalesce(last_name, '') || ' ' || coalesce(email, '')"
)
# The roster's reading order, by name then id: the name index follows it, pages walk it.
_NAME_KEY: Final = ("coalesce(lower(last_name), '')", "coalesce(lower(first_name), '')")
ORDER_KEY: Final = ", ".join((*_NAME_KEY, "attendee_id"))
STATUSES: Final = ("registered", "deleted", "unregistered", "all")
# How many rows of the name order a search page walks, per row of the page, before it turns to
# the trigram index: a term that matches one row in ten near the cursor (a surname's pages
# after its first, a common mail domain) fills its page from the walk; a rarer one pays the
# walk on top of the trigram query (0.6-1.2 ms for a page of 50 on 100k attendees; a walk
# of 255 rows would halve it but miss a mail domain's first page). 0: the trigram query alone.
SEARCH_WALK: Final = 10

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
# The stage's columns read as the table's (shared with projections/roster_history.py).
STAGE_SELECT: Final = sql.SQL(", ").join(
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
    tables: Final = ("roster", "roster_deliveries", "roster_search", "roster_field_names")
    event_types: Final = None  # every event concerns an attendee's row

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
            _search_table(version),
            _field_names_table(version),
        ]

    def indexes(self, version: Version) -> list[sql.Composed]:
        table = version.table("roster")
        return [
            # The roster's reading order.
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (slug, {})").format(
                sql.Identifier(f"roster_v{version.version}_name"), table, sql.SQL(ORDER_KEY)
            ),
            # Searches read the search table's index; one on the wide roster too cost every live
            # batch about 15% (GIN insertions and their pending-list merges) and a rebuild its
            # build, to save an export with `q=` a scan (~0.1 s per 100,000 attendees).
            sql.SQL("DROP INDEX IF EXISTS {}").format(
                sql.Identifier(VIEWS_SCHEMA, f"roster_v{version.version}_search")
            ),
            # Pages of a search read the narrow search table (a version made before it had none).
            _search_table(version),
            *_search_sync(version),
            # On the lower-cased text: a match is then checked by LIKE, not ILIKE, which lower-
            # cases every candidate again (three quarters of a search's time for a surname).
            # A version made before it has no such column: its index stays on `search`.
            sql.SQL(
                "DO $do$ BEGIN IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = "
                "{regclass}::regclass AND attname = 'folded' AND NOT attisdropped) THEN "
                "CREATE INDEX IF NOT EXISTS {name} ON {table} USING gin (folded gin_trgm_ops); "
                "ELSE CREATE INDEX IF NOT EXISTS {name} ON {table} "
                "USING gin (search gin_trgm_ops); END IF; END $do$"
            ).format(
                regclass=sql.Literal(f"{VIEWS_SCHEMA}.roster_search_v{version.version}"),
                name=sql.Identifier(f"roster_search_v{version.version}_trgm"),
                table=version.table("roster_search"),
            ),
            # A search's page first walks the name order here, after the table is filled.
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (slug, k1, k2, attendee_id)").format(
                sql.Identifier(f"roster_search_v{version.version}_name"),
                version.table("roster_search"),
            ),
            # An export's form-field columns (a version made before it had no such table).
            _field_names_table(version),
            *_field_names_sync(version),
        ]

    def migrations(self, version: Version) -> list[sql.Composed]:
        return []

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
        search = sql.SQL(
            "SELECT slug AS event, attendee_id, status, role, checked_in, paid, k1, k2, search, "
            "folded AS search_folded FROM {}"
        ).format(version.table("roster_search"))
        # One row per attendee and form field, for BI tools that filter or pivot on a field
        # (a column per field cannot be a fixed SQL view: the fields differ by event).
        fields = sql.SQL(
            "SELECT r.slug AS event, r.attendee_id, f.key AS field, f.value AS value "
            "FROM {} r, json_each_text(r.fields) f"
        ).format(version.table("roster"))
        names = sql.SQL(
            "SELECT slug AS event, field, attendees FROM {} WHERE attendees > 0"
        ).format(version.table("roster_field_names"))
        return [
            (ROSTER, select),
            (ATTENDEE_DELIVERIES, deliveries),
            (ROSTER_SEARCH, search),
            (ROSTER_FIELDS, fields),
            (ROSTER_FIELD_NAMES, names),
        ]

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
            own = entries.get(key)
            try:
                if own is not None:
                    apply_owned(own, event)  # made by this fold: changed in place
                    continue
                before = states.get(key)
                if event.event_type == ERASED and before is None:
                    continue  # an erasure ahead of any delivery: nobody to scrub, no row to make
                entries[key] = apply(before, event)
            except Exception as error:
                poison(event, error)
        # An erasure is rollcall's record, not a delivery about the attendee: not in history
        # (nor in the event's last delivery, from which retention counts).
        touched = [(e.slug, e.attendee_id, e.position) for e in events if e.event_type != ERASED]
        return entries, RosterWrite([entries[key] for key in sorted(entries)], touched)

    def write(self, cur: psycopg.Cursor[Any], version: Version, write: RosterWrite) -> None:
        _store(cur, version, write.entries)
        if write.deliveries:
            cur.execute(
                _statements(version).add_deliveries,
                [list(column) for column in zip(*write.deliveries, strict=True)],
            )

    def bulk(self, version: Version) -> RosterBulk:
        return RosterBulk(version)


class RosterBulk(RowsOnly):
    """A fresh roster version's rows, each written once with binary COPY (no staging, no
    upsert: a bulk rebuild folds each attendee once)."""

    def __init__(self, version: Version) -> None:
        # `fields` goes as text: json's binary input is its text.
        self._rows = copy_into(version.table("roster"), _NAMES, _STAGE_TYPES)
        self._deliveries = copy_into(
            version.table("roster_deliveries"),
            ["slug", "attendee_id", "position"],
            ["text", "text", "int8"],
        )

    def add(self, cur: psycopg.Cursor[Any], write: RosterWrite) -> None:
        copy_rows(cur, self._rows, (_row(entry) for entry in write.entries))
        copy_rows(cur, self._deliveries, write.deliveries)


# What a search reads, narrow (~100 bytes a row, against ~2 kB for the roster's with its fold
# state and form fields): the filters, the name order and the search text, as written and
# lower-cased (`folded`, what `q=` matches with LIKE where ILIKE would lower-case each row
# at every search). Kept by statement
# triggers on the roster table, so every writer of a roster row (folds, bulk fills, erasure)
# keeps it in step; a bulk fill writes it once, set-based, when the version's indexes are made.
_SEARCH_COLUMNS: Final = (
    f"slug, attendee_id, status, role, checked_in, paid, {_NAME_KEY[0]}, {_NAME_KEY[1]}, "
    f"{SEARCH_TEXT}, lower({SEARCH_TEXT})"
)


def _search_table(version: Version) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (slug text NOT NULL, attendee_id text NOT NULL, "
        "status text NOT NULL, role text, checked_in boolean NOT NULL, paid boolean NOT NULL, "
        "k1 text NOT NULL, k2 text NOT NULL, search text NOT NULL, folded text NOT NULL, "
        "PRIMARY KEY (slug, attendee_id))"
    ).format(version.table("roster_search"))


def _search_sync(version: Version) -> list[sql.Composed]:
    """The triggers that keep a version's search table in step with its roster table."""
    search = version.table("roster_search")
    updates = ", ".join(
        f"{c} = excluded.{c}"
        for c in ("status", "role", "checked_in", "paid", "k1", "k2", "search", "folded")
    )
    body = sql.SQL(
        "BEGIN IF TG_OP = 'DELETE' THEN DELETE FROM {search} s USING changed c "
        "WHERE s.slug = c.slug AND s.attendee_id = c.attendee_id; "
        "ELSE INSERT INTO {search} SELECT {columns} FROM changed "
        "ON CONFLICT (slug, attendee_id) DO UPDATE SET {updates}; END IF; RETURN NULL; END"
    ).format(search=search, columns=sql.SQL(_SEARCH_COLUMNS), updates=sql.SQL(updates))
    fill = sql.SQL("INSERT INTO {search} SELECT {columns} FROM {roster} ON CONFLICT DO NOTHING")
    return _kept_by_triggers(
        version,
        function=f"roster_v{version.version}_search_sync",
        triggers="search",
        body=body,
        transitions={
            "INSERT": "NEW TABLE AS changed",
            "UPDATE": "NEW TABLE AS changed",
            "DELETE": "OLD TABLE AS changed",
        },
        fill=fill.format(
            search=search, columns=sql.SQL(_SEARCH_COLUMNS), roster=version.table("roster")
        ),
    )


def _kept_by_triggers(
    version: Version,
    function: str,
    triggers: str,
    body: sql.Composable,
    transitions: dict[str, str],
    fill: sql.Composable,
) -> list[sql.Composed]:
    """Statement triggers on a version's roster table that run the plpgsql `body` after each
    write, with each operation's transition tables named in `transitions`.

    The function is made once, never replaced (it may belong to another role). The triggers
    are made once too, and `fill` then takes what they keep from the roster under their lock:
    nothing is written in between."""
    roster = version.table("roster")
    name = sql.Identifier(VIEWS_SCHEMA, function)
    created = [
        sql.SQL(
            "CREATE TRIGGER {trigger} AFTER {op} ON {roster} REFERENCING {tables} "
            "FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        ).format(
            trigger=sql.Identifier(f"{triggers}_{op.lower()}"),
            op=sql.SQL(op),
            roster=roster,
            tables=sql.SQL(tables),
            function=name,
        )
        for op, tables in transitions.items()
    ]
    return [
        sql.SQL(
            "DO $do$ BEGIN IF to_regprocedure({signature}) IS NULL THEN "
            "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $body$ {body} "
            "$body$; END IF; END $do$"
        ).format(signature=sql.Literal(f"{VIEWS_SCHEMA}.{function}()"), function=name, body=body),
        sql.SQL(
            "DO $do$ BEGIN IF NOT EXISTS (SELECT FROM pg_trigger "
            "WHERE tgrelid = {regclass}::regclass AND tgname = {first}) THEN {created}; "
            "{fill}; END IF; END $do$"
        ).format(
            regclass=sql.Literal(f"{VIEWS_SCHEMA}.roster_v{version.version}"),
            first=sql.Literal(f"{triggers}_insert"),
            created=sql.SQL("; ").join(created),
            fill=fill,
        ),
    ]


# How many attendees of each event carry each form field (deleted ones too; an erased one
# carries none): an export's field columns are read here instead of from every row's fields
# (0.5 s for 100,000 attendees). Kept by statement triggers on the roster table, like the
# search table, so every writer of a roster row keeps it right.
def _field_names_table(version: Version) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (slug text NOT NULL, field text NOT NULL, "
        "attendees bigint NOT NULL, PRIMARY KEY (slug, field))"
    ).format(version.table("roster_field_names"))


def _field_names_sync(version: Version) -> list[sql.Composed]:
    """The triggers that count a version's form fields as its roster rows change. Counts
    change in key order, so two writers never wait on each other's rows crosswise."""
    names = version.table("roster_field_names")

    def counted(rows: str, sign: int) -> str:
        return f"SELECT slug, k AS field, {sign} AS d FROM {rows}, json_object_keys(fields) k"

    def upsert(changes: str) -> sql.Composed:
        return sql.SQL(
            "INSERT INTO {names} AS n SELECT slug, field, sum(d) FROM (" + changes + ") c "
            "GROUP BY slug, field HAVING sum(d) <> 0 ORDER BY slug, field "
            "ON CONFLICT (slug, field) DO UPDATE SET attendees = n.attendees + excluded.attendees"
        ).format(names=names)

    added, removed = counted("added", 1), counted("removed", -1)
    body = sql.SQL(
        "BEGIN IF TG_OP = 'INSERT' THEN {insert}; ELSIF TG_OP = 'DELETE' THEN {delete}; "
        "ELSE {update}; END IF; RETURN NULL; END"
    ).format(
        insert=upsert(added),
        delete=upsert(removed),
        update=upsert(f"{added} UNION ALL {removed}"),
    )
    fill = sql.SQL(
        "INSERT INTO {names} SELECT slug, k, count(*) FROM {roster}, json_object_keys(fields) k "
        "GROUP BY slug, k ON CONFLICT DO NOTHING"
    )
    return _kept_by_triggers(
        version,
        function=f"roster_v{version.version}_field_names",
        triggers="field_names",
        body=body,
        transitions={
            "INSERT": "NEW TABLE AS added",
            "UPDATE": "OLD TABLE AS removed NEW TABLE AS added",
            "DELETE": "OLD TABLE AS removed",
        },
        fill=fill.format(names=names, roster=version.table("roster")),
    )


class _Statements(msgspec.Struct, frozen=True):
    """What a live batch sends for one roster version, rendered once."""

    load: bytes
    store: Upsert
    add_deliveries: bytes


@lru_cache(maxsize=16)
def _statements(version: Version) -> _Statements:
    roster = version.table("roster")
    return _Statements(
        load=sql.SQL(
            "SELECT r.state, r.fields::text FROM {} r "
            "JOIN unnest(%b::text[], %b::text[]) AS k(slug, attendee_id) USING (slug, attendee_id)"
        )
        .format(roster)
        .as_bytes(None),
        store=upsert_into(
            roster,
            stage=f"roster_v{version.version}_stage",
            columns=_NAMES,
            types=_STAGE_TYPES,
            select=STAGE_SELECT,
            key=["slug", "attendee_id"],
        ),
        add_deliveries=sql.SQL(
            "INSERT INTO {} SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[]) "
            "ON CONFLICT DO NOTHING"
        )
        .format(version.table("roster_deliveries"))
        .as_bytes(None),
    )


def _load(cur: psycopg.Cursor[Any], version: Version, keys: list[Key]) -> dict[Key, RosterEntry]:
    if not keys:
        return {}
    rows = cur.execute(
        _statements(version).load, ([k[0] for k in keys], [k[1] for k in keys])
    ).fetchall()
    entries = (_decode(row[0], row[1]) for row in rows)
    return {(e.slug, e.attendee_id): e for e in entries}


def _store(cur: psycopg.Cursor[Any], version: Version, entries: list[RosterEntry]) -> None:
    if entries:
        upsert_rows(cur, _statements(version).store, (_row(entry) for entry in entries))


def _row(entry: RosterEntry) -> tuple[Any, ...]:
    fields = entry.fields
    fields_text, exact = json_text_exact(fields)
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
        fields_text,
        entry.last_position,
        # The fields are in the state only where the column could not hold them exactly.
        _encode_state(entry, with_fields=not exact),
    )


# What another table of roster rows (projections/roster_history.py) shares with this one: its
# columns, how a row is made from an entry, and the stored state's codec.
COLUMNS: Final = _COLUMNS
COLUMN_NAMES: Final = _NAMES
STAGE_TYPES: Final = _STAGE_TYPES


def row(entry: RosterEntry) -> tuple[Any, ...]:
    """The roster table's row (COLUMN_NAMES) for an entry."""
    return _row(entry)


def decode_state(state: bytes, fields: str) -> RosterEntry:
    """An entry from its row's `state` column and its `fields` column as text."""
    return _decode(state, fields)


def _ticket(value: object) -> str | None:
    # A ticket may arrive as its name or as an object with one.
    if isinstance(value, dict):
        return text(value.get("name") or value.get("listedName") or value.get("listedNameEn"))
    return text(value)


def _encode_state(entry: RosterEntry, with_fields: bool) -> bytes:
    """The entry for the `state` column, compact: each distinct field order written once, the
    fields' indexes into them in the fields' own order (the fold sets a field and its order
    together), and the fields themselves only if `with_fields` (else the row's `fields` column
    holds them). A roster or history row then stays under PostgreSQL's 2 kB TOAST threshold
    (which halves the write cost), and every byte less is one less to write.

    The fields are left out only beside orders by position, which a release before this form
    cannot read: an older runner stops at such a state instead of reading it without fields."""
    orders = sorted(set(entry.field_orders.values()))
    index = {order: n for n, order in enumerate(orders)}
    names = entry.field_orders.keys()
    field_order: list[int] | dict[str, int]
    if list(names) == list(entry.fields):
        field_order = [index[entry.field_orders[name]] for name in names]
    else:
        field_order = {name: index[order] for name, order in entry.field_orders.items()}
        with_fields = True
    kept = msgspec.structs.replace(
        entry, field_orders={}, fields=entry.fields if with_fields else {}
    )
    return _encode_stored((kept, orders, field_order))


def _decode(state: bytes, fields: str) -> RosterEntry:
    stored: _Stored = _decode_stored(state)
    entry, orders, field_order = stored
    if not entry.fields:  # left to the `fields` column (or none: then it reads `{}`)
        entry.fields = _decode_fields(fields)
    if isinstance(field_order, dict):
        entry.field_orders = {name: orders[n] for name, n in field_order.items()}
    else:
        entry.field_orders = {
            name: orders[n] for name, n in zip(entry.fields, field_order, strict=True)
        }
    return entry


def scrub(cur: psycopg.Cursor[Any], version: Version, slug: str, attendee_id: str) -> int:
    """Remove an erased attendee's person from one version of the roster (live, as-of or
    building) now, as the erasure's fold does: no name, email or form field; the rest stays.
    How many rows it changed (0 or 1)."""
    table = version.table("roster")
    row = cur.execute(
        # FOR UPDATE: a runner's write of this row in the meantime is not overwritten.
        sql.SQL(
            "SELECT state, fields::text FROM {} WHERE slug = %s AND attendee_id = %s FOR UPDATE"
        ).format(table),
        (slug, attendee_id),
    ).fetchone()
    if row is None:
        return 0
    entry = scrubbed(_decode(bytes(row[0]), row[1]))
    values = dict(zip(_NAMES, _row(entry), strict=True))
    personal = ("email", "first_name", "last_name", "role", "company", "ticket", "added_by_admin")
    cur.execute(
        sql.SQL(
            "UPDATE {} SET {}, fields = %s::json, state = %s WHERE slug = %s AND attendee_id = %s"
        ).format(
            table,
            sql.SQL(", ").join(sql.SQL("{} = NULL").format(sql.Identifier(c)) for c in personal),
        ),
        (values["fields"], values["state"], slug, attendee_id),
    )
    return 1


# --- Reading ---------------------------------------------------------------------------------


class Attendee(msgspec.Struct, frozen=True, kw_only=True):
    """One attendee as the roster has it now."""

    attendee_id: str
    status: Literal["registered", "deleted", "unregistered"]
    email: str | None
    first_name: str | None
    last_name: str | None
    role: str | None
    company: str | None
    ticket: str | None
    added_by_admin: bool | None
    checked_in: bool
    paid: bool
    amount: Decimal | None
    currency: str | None
    payment_method: str | None
    paid_at: datetime | None
    registered_at: datetime | None
    first_seen_at: datetime
    deleted_at: datetime | None
    last_check_in_at: datetime | None
    last_check_out_at: datetime | None
    fields: msgspec.Raw  # the attendee's form fields as JTE sent them (JSON object)


class Filter(msgspec.Struct, frozen=True, kw_only=True):
    """Which attendees a page or an export holds; `status` None: all but the deleted ones."""

    status: str | None = None
    role: str | None = None
    checked_in: bool | None = None
    paid: bool | None = None
    q: str | None = None  # part of a name or email


# The attendee keys the roster already has columns for: no `field:` column repeats them.
COLUMN_FIELDS: Final = (
    "id", "attendeeId", "email", "firstName", "lastName", "role", "company", "ticket",
    "addedByAdmin",
)  # fmt: skip
FIELD_PREFIX: Final = "field:"
MAX_FIELD_COLUMNS: Final = 500
_ATTENDEE_COLUMNS: Final = (
    "attendee_id, status, email, first_name, last_name, role, company, ticket, added_by_admin, "
    "checked_in, paid, amount, currency, payment_method, paid_at, registered_at, first_seen_at, "
    "deleted_at, last_check_in_at, last_check_out_at, fields::text AS fields"
)
EXPORT_COLUMNS: Final = [c.split()[-1] for c in _ATTENDEE_COLUMNS.split(", ")]


async def page(
    pool: asyncpg.Pool,
    slug: str,
    only: Filter,
    limit: int,
    after: list[str] | None,
    source: str = _ROSTER,
) -> tuple[list[Attendee], list[str] | None]:
    """Up to `limit` attendees in name order after the key `after`; and the key to continue
    from, if there are more. `source`: a relation of analytics.roster's shape (as_of's)."""
    # A search of 3+ characters can use a trigram index; fewer, and walking the name order
    # until the page is full is the cheaper plan. The live roster's search reads its narrow
    # search table (walking its name order first); an as_of relation is searched directly.
    searched = only.q is not None and len(only.q) >= 3
    narrow = searched and source == _ROSTER
    folded = narrow and _FOLDED.usable()
    try:
        rows = await _page_rows(pool, slug, only, limit, after, source, searched, narrow, folded)
    except asyncpg.UndefinedColumnError:
        if not folded:
            raise
        _FOLDED.missing()
        rows = await _page_rows(pool, slug, only, limit, after, source, searched, narrow, False)
    items = [_attendee(row) for row in rows[:limit]]
    if len(rows) <= limit:
        return items, None
    last = rows[limit - 1]
    return items, [last["k1"], last["k2"], last["attendee_id"]]


async def _page_rows(
    pool: asyncpg.Pool,
    slug: str,
    only: Filter,
    limit: int,
    after: list[str] | None,
    source: str,
    searched: bool,
    narrow: bool,
    folded: bool,
) -> list[asyncpg.Record]:
    column = ("search_folded" if folded else "search") if narrow else None
    conditions, args = _where(slug, only, search_column=column, folded=folded)
    matches = " AND ".join(conditions[1:])  # all but the event's
    cursor = None
    if after is not None:
        args += after
        n = len(args)
        key = "k1, k2, attendee_id" if narrow else ORDER_KEY
        cursor = f"({key}) > (${n - 2}, ${n - 1}, ${n})"
        conditions.append(cursor)
    args.append(limit + 1)
    where = " AND ".join(conditions)
    if narrow:
        walked = await _walk(pool, matches, cursor, args, limit)
        if walked is not None:
            return walked
        query = _narrow_searched_page(where, len(args))
    elif searched:
        query = _searched_page(where, len(args), source)
    else:
        query = _ordered_page(where, len(args), source)
    rows: list[asyncpg.Record] = await pool.fetch(query, *args)
    return rows


async def _walk(
    pool: asyncpg.Pool, matches: str, cursor: str | None, args: list[Any], limit: int
) -> list[asyncpg.Record] | None:
    """A search page's rows from a walk of the name order; None if the walk cannot tell (its
    window ended before the page was full and before the event's last row)."""
    window = SEARCH_WALK * (limit + 1)
    if not window:
        return None
    rows = await pool.fetch(_walked_page(matches, cursor, len(args), window), *args)
    hits = [row for row in rows if row["hit"]]
    # The window's last row comes back, match or not: without it the walk read every row after
    # the cursor (or stopped at a full page), and its answer is whole.
    if len(hits) > limit or not rows or rows[-1]["n"] < window:
        return hits
    return None


class _FoldedSearch:
    """Whether the live roster's search table has the lower-cased search text: a version made
    before it has not, and is searched with ILIKE until a rebuild replaces it (asked again a
    minute after it was found missing)."""

    def __init__(self) -> None:
        self._missing_at: float | None = None

    def usable(self) -> bool:
        return self._missing_at is None or time.monotonic() - self._missing_at > 60

    def missing(self) -> None:
        self._missing_at = time.monotonic()


_FOLDED: Final = _FoldedSearch()


def export(
    slug: str, only: Filter, field_names: Sequence[str] = (), source: str = _ROSTER
) -> tuple[str, list[Any], list[str]]:
    """Every attendee of a page's filter, in name order: the query, its arguments, and the
    header, which ends with one `field:<name>` column per form field in `field_names`."""
    conditions, args = _where(slug, only)
    where = " AND ".join(conditions)
    columns = [_ATTENDEE_COLUMNS]
    for n, name in enumerate(field_names):
        args.append(name)
        # Aliased by number: PostgreSQL would cut a long field name at 63 bytes.
        columns.append(f"fields ->> ${len(args)} AS f{n}")
    # OFFSET 0 keeps the rows apart from the columns: inlined, the analytics view's
    # `fields::jsonb` was converted again for every field column and `fields` itself (100,000
    # rows with 7 field columns: 2.9 s against 1.3 s). The projection keeps the rows' order.
    rows = f"SELECT * FROM {source} AS src WHERE {where} ORDER BY {ORDER_KEY} OFFSET 0"
    query = f"SELECT {', '.join(columns)} FROM ({rows}) AS src"
    return query, args, [*EXPORT_COLUMNS, *(FIELD_PREFIX + name for name in field_names)]


async def field_names(pool: asyncpg.Pool, slug: str, source: str = _ROSTER) -> list[str]:
    """The form fields JTE sent for any attendee of the event (deleted ones too), but those the
    roster has columns for, in byte order of their names: the same fields give the same
    columns in every export of the event. At most MAX_FIELD_COLUMNS."""
    if source == _ROSTER:
        try:
            return await _names(pool, f"SELECT field FROM {_FIELD_NAMES} WHERE event = $1", slug)
        except asyncpg.UndefinedTableError:
            pass  # served before the runner's start (ensure_views) gave the live version one
    scan = f"SELECT DISTINCT jsonb_object_keys(fields) FROM {source} AS src WHERE event = $1"
    return await _names(pool, scan, slug)


async def _names(pool: asyncpg.Pool, names: str, slug: str) -> list[str]:
    rows = await pool.fetch(
        f"SELECT k FROM ({names}) s(k) WHERE NOT (k = ANY($2::text[])) "
        'ORDER BY k COLLATE "C" LIMIT $3',
        slug,
        list(COLUMN_FIELDS),
        MAX_FIELD_COLUMNS,
    )
    return [row[0] for row in rows]


async def attendee(
    pool: asyncpg.Pool, slug: str, attendee_id: str, source: str = _ROSTER
) -> Attendee | None:
    """One attendee, deleted or not."""
    row = await pool.fetchrow(
        f"SELECT {_ATTENDEE_COLUMNS} FROM {source} AS src WHERE event = $1 AND attendee_id = $2",
        slug,
        attendee_id,
    )
    return _attendee(row) if row is not None else None


async def registered(pool: asyncpg.Pool, slugs: list[str]) -> dict[str, int]:
    """How many registered attendees each of these JTE events has, in the database's order of
    their slugs."""
    rows = await pool.fetch(
        f"SELECT e.slug, (SELECT count(*) FROM {_ROSTER} r WHERE r.event = e.slug "
        "AND r.status = 'registered') FROM unnest($1::text[]) AS e(slug) ORDER BY e.slug",
        slugs,
    )
    return {row[0]: row[1] for row in rows}


def _where(
    slug: str, only: Filter, search_column: str | None = None, folded: bool = False
) -> tuple[list[str], list[Any]]:
    conditions = ["event = $1"]
    args: list[Any] = [slug]
    if only.status is None:
        conditions.append("status <> 'deleted'")  # deleted attendees are kept, not listed
    elif only.status != "all":
        args.append(only.status)
        conditions.append(f"status = ${len(args)}")
    for column, value in (("checked_in", only.checked_in), ("paid", only.paid)):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    if only.role is not None:
        args.append(only.role)
        conditions.append(f"role = ${len(args)}")
    if only.q is not None:
        args.append(_like(only.q))
        if folded:
            # ILIKE is exactly this on a UTF-8 database: LIKE on both sides lower-cased.
            conditions.append(f"{search_column} LIKE lower(${len(args)})")
        else:
            conditions.append(f"({search_column or SEARCH_TEXT}) ILIKE ${len(args)}")
    return conditions, args


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _ordered_page(where: str, limit_arg: int, source: str) -> str:
    """One roster page read in the name index's order."""
    return (
        f"SELECT {_ATTENDEE_COLUMNS}, {_NAME_KEY[0]} AS k1, {_NAME_KEY[1]} AS k2 "
        f"FROM {source} AS src WHERE {where} ORDER BY {ORDER_KEY} LIMIT ${limit_arg}"
    )


def _searched_page(where: str, limit_arg: int, source: str) -> str:
    """One page of a search: collect the matching keys first, then read only the page's rows.

    Left alone, the planner walks the name index and filters row by row, because with a LIMIT
    it assumes matches are spread evenly; for a surname that is ~60k heap reads (140 ms)."""
    return (
        f"WITH hits AS MATERIALIZED (SELECT attendee_id AS hit_id, {_NAME_KEY[0]} AS k1, "
        f"{_NAME_KEY[1]} AS k2 FROM {source} AS src WHERE {where}), "
        f"page AS (SELECT * FROM hits ORDER BY k1, k2, hit_id LIMIT ${limit_arg}) "
        f"SELECT {_ATTENDEE_COLUMNS}, page.k1, page.k2 FROM page JOIN {source} r "
        "ON r.event = $1 AND r.attendee_id = page.hit_id ORDER BY page.k1, page.k2, page.hit_id"
    )


def _walked_page(matches: str, cursor: str | None, limit_arg: int, window: int) -> str:
    """One page of a search read in name order: the matches among the `window` rows after the
    cursor, up to the page's size, and the window's last row (n = window) whether it matches
    or not. It stops at a full page, so a term common near the cursor costs a few rows.

    The filters are tested on the rows walked, not in the walk's WHERE: there a rare filter
    would make the walk read many times `window` rows before giving up."""
    after = f" AND {cursor}" if cursor else ""
    return (
        "WITH page AS MATERIALIZED (SELECT * FROM (SELECT *, row_number() OVER (ORDER BY k1, "
        f"k2, hit_id) AS n FROM (SELECT attendee_id AS hit_id, k1, k2, ({matches}) IS TRUE "
        f"AS hit FROM {_SEARCH} WHERE event = $1{after} ORDER BY k1, k2, attendee_id "
        f"LIMIT {window}) walk) walk WHERE hit OR n = {window} ORDER BY k1, k2, hit_id "
        f"LIMIT ${limit_arg}) SELECT {_ATTENDEE_COLUMNS}, page.k1, page.k2, page.hit, page.n "
        f"FROM page JOIN {_ROSTER} r ON r.event = $1 AND r.attendee_id = page.hit_id "
        "ORDER BY page.k1, page.k2, page.hit_id"
    )


def _narrow_searched_page(where: str, limit_arg: int) -> str:
    """One page of a search: the page's keys from the narrow search table (its trigram index
    finds every match, a top-N sort orders them), then only the page's roster rows.

    The roster table itself is ~2 kB a row: collecting a common surname's matches there read
    thousands of wide rows; the search table's rows are ~20 times narrower. The matches are
    found in a subquery the planner keeps apart (OFFSET 0): shown the order and the limit, it
    walks the name index instead and filters row by row (40-85 ms for "Nowak", whose first
    match is the 58,484th name of 100k)."""
    return (
        f"WITH page AS MATERIALIZED (SELECT * FROM (SELECT attendee_id AS hit_id, k1, k2 "
        f"FROM {_SEARCH} WHERE {where} OFFSET 0) hits ORDER BY k1, k2, hit_id "
        f"LIMIT ${limit_arg}) SELECT {_ATTENDEE_COLUMNS}, page.k1, page.k2 FROM page "
        f"JOIN {_ROSTER} r ON r.event = $1 AND r.attendee_id = page.hit_id "
        "ORDER BY page.k1, page.k2, page.hit_id"
    )


def _attendee(row: asyncpg.Record) -> Attendee:
    values = dict(row)
    for key in ("k1", "k2", "hit", "n"):  # the page's order and the walk's bookkeeping
        values.pop(key, None)
    values["fields"] = msgspec.Raw(values["fields"].encode())
    return Attendee(**values)
