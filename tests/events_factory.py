"""Builders of AttendeeEvent values for the pure-fold tests (no database, no HTTP).

A delivery is its type, attendee, occurrence time and delivery key. Keys and positions come from
counters so that a test run is reproducible; a test that depends on how two deliveries stamped
with the same instant are tie-broken passes its keys explicitly.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from domain.events import AttendeeEvent, attendee_event, order_token
from domain.interpret import Interpreted, interpret
from domain.ledger import LedgerEntry, PaymentError, ledger_entry, merge
from domain.presence import Change, Moves, Presence, add, changes, is_move, presence

SLUG = "jte-2026"
DAY = datetime(2026, 5, 14, tzinfo=UTC)

_keys = itertools.count(1_000)
_positions = itertools.count(1)


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    """An instant on the conference day, UTC."""
    return DAY.replace(hour=hour, minute=minute, second=second)


def key(n: int) -> UUID:
    """A delivery key whose place among keys is `n` (UUIDs sort like their integers)."""
    return UUID(int=n)


def make_event(
    event_type: str,
    attendee_id: str = "a-1",
    when: datetime = DAY,
    *,
    fields: Mapping[str, Any] | None = None,
    delivery_key: UUID | None = None,
    position: int | None = None,
    slug: str = SLUG,
) -> AttendeeEvent:
    """A delivery that carried its own occurrence time `when`."""
    chosen_key = delivery_key if delivery_key is not None else UUID(int=next(_keys))
    return AttendeeEvent(
        slug=slug,
        attendee_id=attendee_id,
        event_type=event_type,
        at=when,
        timed=True,
        order=order_token(when, chosen_key),
        position=position if position is not None else next(_positions),
        key=chosen_key,
        attendee={"id": attendee_id, **(fields or {})},
    )


def paying(
    amount: object = "349.00",
    currency: object = "PLN",
    method: object = "przelewy24",
    reference: object = None,
) -> dict[str, Any]:
    """Attendee fields of a payment confirmation, in the canonical nested `payment` object."""
    payment: dict[str, Any] = {"amount": amount, "currency": currency, "method": method}
    if reference is not None:
        payment["reference"] = reference
    return {"payment": payment}


def delivered(
    body: Mapping[str, Any] | bytes,
    received_at: datetime,
    *,
    position: int | None = None,
    delivery_key: UUID | None = None,
    slug: str = SLUG,
) -> AttendeeEvent:
    """A delivery read the way the projections read it: JSON bytes -> interpret -> attendee_event.

    Used where the envelope matters (a missing occurredAt, JSON numbers as amounts); `body` is
    the exact bytes, or a mapping to encode as JSON.
    """
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    reading = interpret(raw)
    assert isinstance(reading, Interpreted), reading
    return attendee_event(
        slug,
        position if position is not None else next(_positions),
        delivery_key if delivery_key is not None else UUID(int=next(_keys)),
        received_at,
        reading,
    )


def moves_of(events: Iterable[AttendeeEvent]) -> dict[tuple[str, str], Moves]:
    """Every attendee's moves, added one delivery at a time in the given arrival order."""
    moves: dict[tuple[str, str], Moves] = {}
    for event in events:
        if is_move(event):
            who = (event.slug, event.attendee_id)
            moves[who] = add(moves.get(who), event)
    return moves


def presences(events: Iterable[AttendeeEvent]) -> dict[tuple[str, str], Presence]:
    return {who: presence(m) for who, m in moves_of(events).items()}


def all_changes(events: Iterable[AttendeeEvent]) -> list[Change]:
    """The occupancy steps of every attendee together (in no particular order)."""
    return [step for p in presences(events).values() for step in changes(p)]


def ledger_entries(events: Iterable[AttendeeEvent]) -> list[LedgerEntry]:
    """The entries the confirmations make; unusable ones (poison) are left out."""
    entries = []
    for event in events:
        try:
            entries.append(ledger_entry(event))
        except PaymentError:
            continue
    return entries


def ledger_of(events: Iterable[AttendeeEvent]) -> dict[tuple[str, str], LedgerEntry]:
    return merge(ledger_entries(events))


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)
