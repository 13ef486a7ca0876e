"""An attendee's history: the stored deliveries the roster says concern them, read as now."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import asyncpg
import msgspec

from domain import deliveries as stored_form
from domain.interpret import Interpreted, interpret
from projections.roster import ATTENDEE_DELIVERIES
from projections.schema import ANALYTICS, INTERNAL
from service.eventstore import keys
from service.eventstore.store import EVENTS_TABLE

# The attendee object as sent: numbers stay numbers, with their digits.
_encode_sent: Final = msgspec.json.Encoder(decimal_format="number").encode


class DeliveryRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One delivery about the attendee, as kept in the event store."""

    position: int
    received_at: datetime
    event_type: str
    occurred_at: datetime | None
    delivery_id: str | None
    attendee: msgspec.Raw  # the attendee object exactly as in the delivery (JSON object)


async def attendee_history(pool: asyncpg.Pool, slug: str, attendee_id: str) -> list[DeliveryRecord]:
    """The attendee's deliveries from the store, in position order, as the current parser reads
    them (one it cannot read is left out)."""
    rows = await pool.fetch(
        "SELECT e.notification_id, e.originator_id, e.state "
        f"FROM {ANALYTICS}.{ATTENDEE_DELIVERIES} h "
        f"JOIN {INTERNAL}.{EVENTS_TABLE} e ON e.notification_id = h.position "
        "WHERE h.event = $1 AND h.attendee_id = $2 ORDER BY e.notification_id",
        slug,
        attendee_id,
    )
    states = [(position, key, stored_form.decode(state)) for position, key, state in rows]
    aead = await _data_key(pool, slug, attendee_id, [state for _, _, state in states])
    history = []
    for position, key, stored in states:
        body = stored.body
        if stored.sealed is not None and aead is not None:
            body = keys.unseal(aead, stored.sealed, key) or body
        reading = interpret(body)
        if not isinstance(reading, Interpreted):
            continue
        history.append(
            DeliveryRecord(
                position=position,
                received_at=stored.timestamp,
                event_type=reading.event_type,
                occurred_at=reading.occurred_at,
                delivery_id=reading.delivery_id,
                attendee=msgspec.Raw(_encode_sent(reading.attendee)),
            )
        )
    return history


async def _data_key(
    pool: asyncpg.Pool, slug: str, attendee_id: str, states: list[stored_form.DeliveryState]
) -> Any:
    """The attendee's data key, if their deliveries are sealed and it was not erased."""
    if not any(state.sealed is not None for state in states):
        return None
    wrapped = await pool.fetchval(
        f"SELECT wrapped FROM {INTERNAL}.{keys.KEYS_TABLE} "
        "WHERE slug = $1 AND kind = 'a' AND subject = $2",
        slug,
        attendee_id,
    )
    if wrapped is None:
        return None
    return keys.active().unwrap((slug, keys.ATTENDEE, attendee_id), bytes(wrapped))
