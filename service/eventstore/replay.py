"""Replay of quarantined deliveries: what the current parser can now read is appended again.

The appended delivery is the same bytes, headers and receipt time, linked to the original by
`replay_of`; its key derives from the original's, so running replay twice appends nothing
twice. A JTE retry of the original still meets the original's key and stays a duplicate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final
from uuid import UUID, uuid5

import msgspec

from domain.deliveries import DeliveryState
from domain.interpret import PARSER_VERSION, Interpreted, interpret
from projections.source import StoredDelivery
from service.eventstore.store import DeliveryRecorded, DeliveryStore

_REPLAY_NAMESPACE: Final = UUID("2f0c8a5e-3b1d-5c4e-9a7f-6d8e0b1c2a3f")
_SCAN: Final = 2000


class ReplayReport(msgspec.Struct, kw_only=True):
    """What a replay found and did."""

    scanned: int = 0
    quarantined: int = 0
    readable_now: int = 0
    appended: int = 0
    already_replayed: int = 0


def replay_key(original: UUID) -> UUID:
    """The key of the replay of a quarantined delivery."""
    return uuid5(_REPLAY_NAMESPACE, str(original))


def replay_quarantined(
    store: DeliveryStore, on_progress: Callable[[int, int], None] | None = None
) -> ReplayReport:
    """Re-read every quarantined delivery and append those that now parse; `on_progress` is
    told the position reached and the head after each batch read."""
    report = ReplayReport()
    position = 0
    head = store.head()
    while batch := store.read(position, _SCAN):
        position = batch[-1].position
        if on_progress is not None:
            on_progress(min(position, head), head)
        report.scanned += len(batch)
        replays = []
        for stored in batch:
            if stored.state.quarantine_reason is None:
                continue
            report.quarantined += 1
            replay = _replay(stored)
            if replay is not None:
                replays.append(replay)
        report.readable_now += len(replays)
        if replays:
            appended = sum(p is not None for p in store.append(replays))
            report.appended += appended
            report.already_replayed += len(replays) - appended
    return report


def _replay(stored: StoredDelivery[DeliveryState]) -> DeliveryRecorded | None:
    original = stored.state
    reading = interpret(original.body)
    if not isinstance(reading, Interpreted):
        return None
    return DeliveryRecorded(
        originator_id=replay_key(stored.key),
        originator_version=1,
        timestamp=original.timestamp,
        slug=original.slug,
        body=original.body,
        headers=original.headers,
        verified_by=original.verified_by,
        delivery_id=reading.delivery_id or original.delivery_id,
        event_type=reading.event_type,
        attendee_id=reading.attendee_id,
        occurred_at=reading.occurred_at,
        parser_version=PARSER_VERSION,
        quarantine_reason=None,
        replay_of=stored.key,
    )
