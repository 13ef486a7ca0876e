"""Reading stored deliveries in position order and interpreting them for the folds.

Every stored body is interpreted again with the current parser: the raw delivery is the fact,
so a parser fix followed by a rebuild changes the views without touching the store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final
from uuid import UUID

import msgspec
import psycopg
from psycopg import sql

from domain.events import AttendeeEvent, attendee_event
from domain.interpret import Interpreted, interpret
from service.eventstore.store import EVENTS_TABLE, SCHEMA

_EVENTS: Final = sql.Identifier(SCHEMA, EVENTS_TABLE)
# Stored states read per batch, at most (plus one delivery). A batch held in memory costs about
# three times its states (the driver's copy, Python's, the decoded bodies): bounded by rows
# alone, 5,000 bodies near intake's 1 MiB limit took gigabytes. Everyday deliveries (~2 KB)
# never reach it.
BATCH_BYTES: Final = 32 * 2**20


class _Stored(msgspec.Struct):
    """The parts of a stored delivery the views need (decoding skips the rest)."""

    timestamp: datetime
    slug: str
    body: bytes
    quarantine_reason: str | None


_decode_state: Final = msgspec.json.Decoder(_Stored).decode


class _ReceivedAt(msgspec.Struct):
    timestamp: datetime


_decode_received: Final = msgspec.json.Decoder(_ReceivedAt).decode


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """A stored delivery at its position: the event it means, or why it means none."""

    position: int
    key: UUID
    received_at: datetime
    event: AttendeeEvent | None
    quarantined: bool = False
    unreadable: str | None = None  # accepted once, but the current parser cannot read it


def read(
    cur: psycopg.Cursor[Any], after: int, limit: int, budget: int = BATCH_BYTES
) -> list[Record]:
    """Up to `limit` deliveries after position `after`, interpreted; fewer once their stored
    states pass `budget` bytes (at least one, however large)."""
    rows = cur.execute(
        sql.SQL(
            "SELECT notification_id, originator_id, state FROM ("
            "SELECT notification_id, originator_id, state, "
            "sum(octet_length(state)) OVER (ORDER BY notification_id) AS upto FROM {} "
            "WHERE notification_id > %s ORDER BY notification_id LIMIT %s) batch "
            "WHERE upto - octet_length(state) < %s ORDER BY notification_id"
        ).format(_EVENTS),
        (after, limit, budget),
    ).fetchall()
    return [record(position, key, bytes(state)) for position, key, state in rows]


def record(position: int, key: UUID, state: bytes) -> Record:
    """Interpret one stored delivery."""
    delivery = _decode_state(state)
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


def head(cur: psycopg.Cursor[Any]) -> int:
    """The highest stored position (0 for an empty store)."""
    row = cur.execute(
        sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {}").format(_EVENTS)
    ).fetchone()
    return int(row[0]) if row else 0


def received_after(cur: psycopg.Cursor[Any], position: int) -> datetime | None:
    """When the first delivery after `position` was received (None if there is none)."""
    row = cur.execute(
        sql.SQL(
            "SELECT state FROM {} WHERE notification_id > %s ORDER BY notification_id LIMIT 1"
        ).format(_EVENTS),
        (position,),
    ).fetchone()
    return _decode_received(bytes(row[0])).timestamp if row else None
