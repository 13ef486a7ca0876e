"""Where the projections read stored deliveries (the port), and what each one means to the folds.

The views never name the event store: they read through `DeliverySource`, which the service
implements over its PostgreSQL table (service/eventstore/source.py) and hands to the runner,
the rebuilds and the status. Reads happen inside the caller's transaction, on the database the
views live in, so a batch reads and writes in one transaction.

Every stored body is interpreted again with the current parser: the raw delivery is the fact,
so a parser fix followed by a rebuild changes the views without touching the store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Generic, Protocol, TypeVar
from uuid import UUID

import msgspec
import psycopg

from domain.deliveries import DeliveryState, StoredBody
from domain.events import ERASED, AttendeeEvent, attendee_event, order_token
from domain.interpret import Interpreted, interpret
from domain.privacy import ERASURE

# Stored states read per batch, at most (plus one delivery). A batch held in memory costs about
# three times its states (the driver's copy, Python's, the decoded bodies): bounded by rows
# alone, 5,000 bodies near intake's 1 MiB limit took gigabytes. Everyday deliveries (~2 KB)
# never reach it.
BATCH_BYTES: Final = 32 * 2**20


class SourceUnavailable(Exception):
    """The stored deliveries cannot be reached now (the database is down): try again later."""


State = TypeVar("State", DeliveryState, StoredBody)


class StoredDelivery(msgspec.Struct, Generic[State], frozen=True):
    """A delivery read back from the store, at its global position: its whole state, or only
    the part the views read (StoredBody)."""

    position: int
    key: UUID
    state: State


class DeliverySource(Protocol):
    """Stored deliveries in position order, read inside the caller's transaction."""

    @property
    def channel(self) -> str:
        """The channel the store NOTIFYs when it stores deliveries."""
        ...

    def prepare(self, database_url: str) -> None:
        """Make the store readable (created if missing); SourceUnavailable while unreachable."""
        ...

    def read(
        self, cur: psycopg.Cursor[Any], after: int, limit: int, budget: int
    ) -> list[StoredDelivery[StoredBody]]:
        """Up to `limit` deliveries after position `after`; fewer once their stored states pass
        `budget` bytes (at least one, however large)."""
        ...

    def head(self, cur: psycopg.Cursor[Any]) -> int:
        """The highest stored position (0 for an empty store)."""
        ...

    def received_after(self, cur: psycopg.Cursor[Any], position: int) -> datetime | None:
        """When the first delivery after `position` was received (None if there is none)."""
        ...


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """A stored delivery at its position: the event it means, or why it means none."""

    position: int
    key: UUID
    received_at: datetime
    event: AttendeeEvent | None
    quarantined: bool = False
    unreadable: str | None = None  # accepted once, but the current parser cannot read it


def occurred_by(record: Record, moment: datetime) -> bool:
    """Whether a delivery had occurred by `moment`: its event's occurrence time (receipt time
    when JTE sent none), or for one that means no event, its receipt time. As-of builds cut
    here, as the API's `as_of=` does."""
    at = record.event.at if record.event is not None else record.received_at
    return at <= moment


def read(
    source: DeliverySource,
    cur: psycopg.Cursor[Any],
    after: int,
    limit: int,
    budget: int = BATCH_BYTES,
) -> list[Record]:
    """Up to `limit` deliveries after position `after`, interpreted (see DeliverySource.read)."""
    return [record(stored) for stored in source.read(cur, after, limit, budget)]


def record(stored: StoredDelivery[StoredBody]) -> Record:
    """Interpret one stored delivery."""
    delivery, position, key = stored.state, stored.position, stored.key
    if delivery.verified_by == ERASURE and delivery.attendee_id is not None:
        # rollcall's own record, never a JTE body: a sender cannot forge one (its type is not
        # one the parser reads, so a JTE delivery saying it is quarantined).
        erased = AttendeeEvent(
            slug=delivery.slug,
            attendee_id=delivery.attendee_id,
            event_type=ERASED,
            at=delivery.timestamp,
            timed=True,
            order=order_token(delivery.timestamp, key),
            position=position,
            key=key,
            attendee={},
        )
        return Record(position=position, key=key, received_at=delivery.timestamp, event=erased)
    if delivery.quarantine_reason is not None:
        return Record(
            position=position, key=key, received_at=delivery.timestamp, event=None, quarantined=True
        )
    reading = interpret(delivery.body)
    if not isinstance(reading, Interpreted):
        return Record(
            position=position,
            key=key,
            received_at=delivery.timestamp,
            event=None,
            unreadable=reading.reason,
        )
    event = attendee_event(delivery.slug, position, key, delivery.timestamp, reading)
    return Record(position=position, key=key, received_at=delivery.timestamp, event=event)
