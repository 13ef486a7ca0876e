"""Point-in-time payments (`as_of=`): the ledger as built from the confirmations that had
occurred by a moment (their occurrence time, else their receipt time), without a rebuild.

The occurrence index (projections/occurrences.py) says which confirmations had occurred by then;
they are folded again by the ledger's own fold (PaymentsView.fold: the same domain rules) into a
temporary table of the analytics view's shape, which the view's own queries then read. (The
roster as of a moment is read from its history instead: projections/roster_history.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Final
from uuid import UUID

import asyncpg

from domain.deliveries import decode_body
from domain.events import PAYMENT_CONFIRMED, AttendeeEvent
from projections import payments
from projections.occurrences import OCCURRENCES
from projections.payments import PaymentsView
from projections.schema import ANALYTICS, INTERNAL
from projections.source import StoredDelivery, record
from service.eventstore.store import EVENTS_TABLE, opened_async

PAYMENTS_TABLE: Final = "pg_temp.as_of_payments"
_OCCURRENCES: Final = f"{ANALYTICS}.{OCCURRENCES}"


def _ignore(event: AttendeeEvent, error: Exception) -> None:
    """A delivery the live view dead-letters is left out here too."""


async def events_at(conn: asyncpg.Connection, positions: list[int]) -> list[AttendeeEvent]:
    """The stored deliveries at `positions`, read as the folds read them."""
    rows = await conn.fetch(
        f"SELECT notification_id, originator_id, state FROM {INTERNAL}.{EVENTS_TABLE} "
        "WHERE notification_id = ANY($1::bigint[]) ORDER BY notification_id",
        positions,
    )
    stored = [
        StoredDelivery(position, UUID(str(key)), decode_body(state))
        for position, key, state in rows
    ]
    events = []
    for delivery in await opened_async(conn, stored):
        read = record(delivery)
        if read.event is not None:
            events.append(read.event)
    return events


@asynccontextmanager
async def payments_as_of(
    pool: asyncpg.Pool, slug: str, when: datetime
) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    """A connection and a table on it holding analytics.payments as of `when`: every payment
    confirmation that had occurred by then, folded by the ledger's own rules."""
    async with pool.acquire() as conn, conn.transaction():
        positions = await conn.fetch(
            f"SELECT position FROM {_OCCURRENCES} WHERE event = $1 AND event_type = $2 "
            "AND at <= $3",
            slug,
            PAYMENT_CONFIRMED,
            when,
        )
        events = await events_at(conn, [row[0] for row in positions])
        _, entries = PaymentsView().fold({}, events, _ignore)
        await conn.execute(
            f"CREATE TEMP TABLE {PAYMENTS_TABLE.split('.')[1]} ON COMMIT DROP AS "
            f"SELECT * FROM {ANALYTICS}.{payments.PAYMENTS} WITH NO DATA"
        )
        await conn.copy_records_to_table(
            PAYMENTS_TABLE.split(".")[1],
            records=[payments.as_of_row(entry) for entry in entries],
            columns=list(payments.ANALYTICS_COLUMNS),
        )
        yield conn, PAYMENTS_TABLE
