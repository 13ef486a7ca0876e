"""The payment ledger view: one row per payment reference, exact numeric amounts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg import sql

from domain.events import PAYMENT_CONFIRMED, AttendeeEvent
from domain.ledger import LedgerEntry, ledger_entry, merge
from projections.columns import text
from projections.schema import Version
from projections.view import Key, Poison


class PaymentsView:
    """The ledger table, its analytics views, and how a batch of confirmations updates it."""

    name: Final = "payments"
    tables: Final = ("payments",)

    def ddl(self, version: Version) -> list[sql.Composed]:
        table = version.table("payments")
        return [
            sql.SQL(
                "CREATE TABLE {} (slug text NOT NULL, entry_key text NOT NULL, "
                "attendee_id text NOT NULL, amount numeric NOT NULL, currency text NOT NULL, "
                "method text NOT NULL, reference text, paid_at timestamptz NOT NULL, "
                "order_token text NOT NULL, position bigint NOT NULL, "
                "PRIMARY KEY (slug, entry_key))"
            ).format(table)
        ]

    def indexes(self, version: Version) -> list[sql.Composed]:
        return [
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (slug, paid_at, entry_key)").format(
                sql.Identifier(f"payments_v{version.version}_paid_at"), version.table("payments")
            )
        ]

    def analytics(self, version: Version) -> list[tuple[str, sql.Composed]]:
        table = version.table("payments")
        return [
            (
                "payments",
                sql.SQL(
                    "SELECT slug AS event, entry_key, attendee_id, amount, currency, method, "
                    "reference, paid_at FROM {}"
                ).format(table),
            ),
            (
                "payment_totals",
                sql.SQL(
                    "SELECT slug AS event, currency, method, (paid_at AT TIME ZONE 'UTC')::date "
                    "AS day, count(*) AS payments, sum(amount) AS amount FROM {} "
                    "GROUP BY slug, currency, method, day"
                ).format(table),
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
        cur.execute(
            sql.SQL(
                "INSERT INTO {0} AS t SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], "
                "%b::numeric[], %b::text[], %b::text[], %b::text[], %b::timestamptz[], "
                "%b::text[], %b::bigint[]) ON CONFLICT (slug, entry_key) DO UPDATE SET "
                "attendee_id = excluded.attendee_id, amount = excluded.amount, "
                "currency = excluded.currency, method = excluded.method, "
                "reference = excluded.reference, paid_at = excluded.paid_at, "
                "order_token = excluded.order_token, position = excluded.position "
                "WHERE excluded.order_token > t.order_token"
            ).format(version.table("payments")),
            (
                [text(e.slug) for e in latest],
                [text(e.entry_key) for e in latest],
                [text(e.attendee_id) for e in latest],
                [e.amount for e in latest],
                [e.currency for e in latest],
                [text(e.method) for e in latest],
                [text(e.reference) for e in latest],
                [e.paid_at for e in latest],
                [e.order for e in latest],
                [e.position for e in latest],
            ),
        )
