"""The payment ledger view: one row per payment reference, exact numeric amounts; and what
analysts ask of it (pages in payment order, CSV, totals by currency, method and day)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final

import asyncpg
import msgspec
import psycopg
from psycopg import sql

from domain.events import PAYMENT_CONFIRMED, AttendeeEvent
from domain.ledger import LedgerEntry, ledger_entry, merge
from projections.columns import text
from projections.copying import copy_into, copy_rows
from projections.schema import ANALYTICS, LOCK_NAMESPACE, SETUP_LOCK, VIEWS_SCHEMA, Version
from projections.view import Key, Poison, RowsOnly

# The analytics views this one publishes.
PAYMENTS: Final = "payments"
PAYMENT_TOTALS: Final = "payment_totals"
_PAYMENTS: Final = f"{ANALYTICS}.{PAYMENTS}"

# Each configured JTE event's IANA time zone, as `rollcall serve` last read its configuration
# (service/http/zones.py): payment_totals cuts days in it. Shared by every version, so made
# with any (IF NOT EXISTS); an event missing here is cut in UTC.
EVENT_ZONES: Final = sql.Identifier(VIEWS_SCHEMA, "event_zones")
ZONES_DDL: Final = sql.SQL(
    "CREATE TABLE IF NOT EXISTS {} (slug text PRIMARY KEY, timezone text NOT NULL)"
).format(EVENT_ZONES)


class PaymentsView:
    """The ledger table, its analytics views, and how a batch of confirmations updates it."""

    name: Final = "payments"
    tables: Final = ("payments",)
    event_types: Final = frozenset({PAYMENT_CONFIRMED})

    def ddl(self, version: Version) -> list[sql.Composed]:
        table = version.table("payments")
        return [
            sql.SQL(
                "CREATE TABLE {} (slug text NOT NULL, entry_key text NOT NULL, "
                "attendee_id text NOT NULL, amount numeric NOT NULL, currency text NOT NULL, "
                "method text NOT NULL, reference text, paid_at timestamptz NOT NULL, "
                "order_token text NOT NULL, position bigint NOT NULL, "
                "PRIMARY KEY (slug, entry_key))"
            ).format(table),
            ZONES_DDL,
        ]

    def indexes(self, version: Version) -> list[sql.Composed]:
        return [
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (slug, paid_at, entry_key)").format(
                sql.Identifier(f"payments_v{version.version}_paid_at"), version.table("payments")
            ),
            ZONES_DDL,  # a version made before there were zones
        ]

    def migrations(self, version: Version) -> list[sql.Composed]:
        return []

    def analytics(self, version: Version) -> list[tuple[str, sql.Composed]]:
        table = version.table("payments")
        return [
            (
                PAYMENTS,
                sql.SQL(
                    "SELECT slug AS event, entry_key, attendee_id, amount, currency, method, "
                    "reference, paid_at FROM {}"
                ).format(table),
            ),
            (
                PAYMENT_TOTALS,
                # Days in the event's own time zone: an evening payment in Warsaw is that day's.
                sql.SQL(
                    "SELECT p.slug AS event, p.currency, p.method, "
                    "(p.paid_at AT TIME ZONE coalesce(z.timezone, 'UTC'))::date AS day, "
                    "count(*) AS payments, sum(p.amount) AS amount, "
                    "coalesce(z.timezone, 'UTC') AS timezone FROM {} p LEFT JOIN {} z "
                    "ON z.slug = p.slug GROUP BY p.slug, p.currency, p.method, day, z.timezone"
                ).format(table, EVENT_ZONES),
            ),
        ]

    def keys(self, events: Sequence[AttendeeEvent]) -> set[Key]:
        return set()  # each confirmation is decided in SQL: the later order wins

    def load(self, cur: psycopg.Cursor[Any], version: Version, keys: list[Key]) -> dict[Key, None]:
        return {}

    def fold(
        self, states: dict[Key, None], events: Sequence[AttendeeEvent], poison: Poison
    ) -> tuple[dict[Key, None], list[LedgerEntry]]:
        """The batch's ledger entries, the latest per payment reference."""
        entries: list[LedgerEntry] = []
        for event in events:
            if event.event_type != PAYMENT_CONFIRMED:
                continue
            try:
                entries.append(ledger_entry(event))
            except Exception as error:
                poison(event, error)
        return {}, list(merge(entries).values())

    def write(self, cur: psycopg.Cursor[Any], version: Version, latest: list[LedgerEntry]) -> None:
        """Record each confirmation; a later one for the same reference replaces it."""
        if not latest:
            return
        rows = (_row(e) for e in latest)
        cur.execute(_record(version), [list(column) for column in zip(*rows, strict=True)])

    def bulk(self, version: Version) -> PaymentsBulk:
        return PaymentsBulk(version)


# The table's columns' types in order, as a COPY sends them (_row's values).
_COLUMN_TYPES: Final = (
    *("text", "text", "text", "numeric", "text", "text", "text"),
    *("timestamptz", "text", "int8"),
)


def _row(e: LedgerEntry) -> tuple[Any, ...]:
    return (
        text(e.slug),
        text(e.entry_key),
        text(e.attendee_id),
        e.amount,
        e.currency,
        text(e.method),
        text(e.reference),
        e.paid_at,
        e.order,
        e.position,
    )


@lru_cache(maxsize=16)
def _record(version: Version) -> bytes:
    """A batch's upsert of confirmations, rendered once per version."""
    return (
        sql.SQL(
            "INSERT INTO {0} AS t SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], "
            "%b::numeric[], %b::text[], %b::text[], %b::text[], %b::timestamptz[], "
            "%b::text[], %b::bigint[]) ON CONFLICT (slug, entry_key) DO UPDATE SET "
            "attendee_id = excluded.attendee_id, amount = excluded.amount, "
            "currency = excluded.currency, method = excluded.method, "
            "reference = excluded.reference, paid_at = excluded.paid_at, "
            "order_token = excluded.order_token, position = excluded.position "
            "WHERE excluded.order_token > t.order_token"
        )
        .format(version.table("payments"))
        .as_bytes(None)
    )


class PaymentsBulk(RowsOnly):
    """A fresh ledger filled by a bulk rebuild: each worker's latest entry per payment reference
    appended with COPY, then settled to one per reference once all are written."""

    def __init__(self, version: Version) -> None:
        self._table = version.table("payments")
        self._copy = copy_into(self._table, None, _COLUMN_TYPES)

    def add(self, cur: psycopg.Cursor[Any], write: list[LedgerEntry]) -> None:
        copy_rows(cur, self._copy, (_row(e) for e in write))

    def settle(self) -> list[sql.Composed]:
        # An entry is a payment reference, which several attendees may share (a group
        # purchase): each worker wrote its attendees' latest, and the latest of all stays, as
        # a live batch's upsert keeps it (ties cannot happen: an order ends in its delivery key).
        return [
            sql.SQL(
                "DELETE FROM {0} a USING {0} b WHERE a.slug = b.slug "
                "AND a.entry_key = b.entry_key AND a.order_token < b.order_token"
            ).format(self._table)
        ]


# --- Reading ---------------------------------------------------------------------------------


class Payment(msgspec.Struct, frozen=True, kw_only=True):
    """One ledger entry: one payment reference (or one delivery when it had none)."""

    entry_key: str
    attendee_id: str
    amount: Decimal
    currency: str
    method: str
    reference: str | None
    paid_at: datetime


class CurrencyTotal(msgspec.Struct, frozen=True, kw_only=True):
    currency: str
    payments: int
    amount: Decimal


class MethodTotal(msgspec.Struct, frozen=True, kw_only=True):
    currency: str
    method: str
    payments: int
    amount: Decimal


class DayTotal(msgspec.Struct, frozen=True, kw_only=True):
    day: date
    currency: str
    payments: int
    amount: Decimal


class PaymentSummary(msgspec.Struct, frozen=True, kw_only=True):
    event: str
    by_currency: list[CurrencyTotal]
    by_method: list[MethodTotal]
    by_day: list[DayTotal]


_COLUMNS: Final = "entry_key, attendee_id, amount, currency, method, reference, paid_at"
EXPORT_COLUMNS: Final = _COLUMNS.split(", ")
# The ledger's reading order (its paid_at index follows it).
_ORDER: Final = "paid_at, entry_key"


async def page(
    pool: asyncpg.Pool,
    slug: str,
    currency: str | None,
    method: str | None,
    limit: int,
    after: tuple[datetime, str] | None,
    source: str = _PAYMENTS,
) -> tuple[list[Payment], tuple[datetime, str] | None]:
    """Up to `limit` entries in payment order after `after` (paid at, entry key); and where to
    continue from, if there are more."""
    conditions, args = _where(slug, currency, method)
    if after is not None:
        args += after
        conditions.append(f"({_ORDER}) > (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    where = " AND ".join(conditions)
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM {source} WHERE {where} ORDER BY {_ORDER} LIMIT ${len(args)}",
        *args,
    )
    items = [Payment(**dict(row)) for row in rows[:limit]]
    if len(rows) <= limit:
        return items, None
    return items, (items[-1].paid_at, items[-1].entry_key)


def export(
    slug: str, currency: str | None, method: str | None, source: str = _PAYMENTS
) -> tuple[str, list[Any]]:
    """Every entry a page's filter holds, in payment order: the query and its arguments."""
    conditions, args = _where(slug, currency, method)
    where = " AND ".join(conditions)
    return f"SELECT {_COLUMNS} FROM {source} WHERE {where} ORDER BY {_ORDER}", args


async def summary(
    pool: asyncpg.Pool, slug: str, tz: str = "UTC", source: str = _PAYMENTS
) -> PaymentSummary:
    """Totals by currency, by currency and method, and by local day (in the IANA time zone
    `tz`, so a day may hold 23 or 25 hours) and currency."""
    by_currency = await pool.fetch(
        "SELECT currency, count(*) AS payments, sum(amount) AS amount "
        f"FROM {source} WHERE event = $1 GROUP BY currency ORDER BY currency",
        slug,
    )
    by_method = await pool.fetch(
        "SELECT currency, method, count(*) AS payments, sum(amount) AS amount "
        f"FROM {source} WHERE event = $1 GROUP BY currency, method "
        "ORDER BY currency, method",
        slug,
    )
    by_day = await pool.fetch(
        "SELECT (paid_at AT TIME ZONE $2)::date AS day, currency, count(*) AS payments, "
        f"sum(amount) AS amount FROM {source} WHERE event = $1 GROUP BY day, currency "
        "ORDER BY day, currency",
        slug,
        tz,
    )
    return PaymentSummary(
        event=slug,
        by_currency=[CurrencyTotal(**dict(row)) for row in by_currency],
        by_method=[MethodTotal(**dict(row)) for row in by_method],
        by_day=[DayTotal(**dict(row)) for row in by_day],
    )


async def record_zones(pool: asyncpg.Pool, zones: Mapping[str, str]) -> list[str]:
    """Record the configured events' time zones (slug: IANA name) for payment_totals, in place
    of what was recorded; a zone PostgreSQL does not know is not recorded (that event's days
    stay UTC) and is returned."""
    async with pool.acquire() as conn, conn.transaction():
        # After (or instead of) the runner's setup of the views' schemas, never beside it.
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_NAMESPACE, SETUP_LOCK)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {VIEWS_SCHEMA}")
        await conn.execute(ZONES_DDL.as_string(None))
        known = {
            row[0]
            for row in await conn.fetch(
                "SELECT name FROM pg_timezone_names WHERE name = ANY($1::text[])",
                sorted(set(zones.values())),
            )
        }
        kept = {slug: zone for slug, zone in zones.items() if zone in known}
        table = EVENT_ZONES.as_string(None)
        await conn.execute(f"DELETE FROM {table} WHERE NOT (slug = ANY($1::text[]))", list(kept))
        await conn.execute(
            f"INSERT INTO {table} AS z SELECT * FROM unnest($1::text[], $2::text[]) "
            "ON CONFLICT (slug) DO UPDATE SET timezone = excluded.timezone "
            "WHERE z.timezone <> excluded.timezone",
            list(kept),
            list(kept.values()),
        )
    return sorted(set(zones.values()) - known)


# analytics.payments' columns, in order: what `as_of_row` gives for a folded entry.
ANALYTICS_COLUMNS: Final = (
    "event", "entry_key", "attendee_id", "amount", "currency", "method", "reference", "paid_at"
)  # fmt: skip


def as_of_row(entry: LedgerEntry) -> tuple[Any, ...]:
    """A ledger entry folded for a past moment as a row of analytics.payments."""
    return (
        text(entry.slug), text(entry.entry_key), text(entry.attendee_id), entry.amount,
        entry.currency, text(entry.method), text(entry.reference), entry.paid_at,
    )  # fmt: skip


def _where(slug: str, currency: str | None, method: str | None) -> tuple[list[str], list[Any]]:
    """Entries of one JTE event; a currency's code is upper case, a method's name lower."""
    conditions = ["event = $1"]
    args: list[Any] = [slug]
    for column, value in (("currency", currency), ("method", method)):
        if value is not None:
            args.append(value.upper() if column == "currency" else value.lower())
            conditions.append(f"{column} = ${len(args)}")
    return conditions, args
