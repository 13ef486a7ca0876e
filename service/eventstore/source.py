"""The event store as the projections read it: projections.source's DeliverySource over the
events table, inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg import sql

from domain import deliveries as stored_form
from domain.deliveries import StoredBody
from projections.schema import INTERNAL
from projections.source import SourceUnavailable, StoredDelivery
from service.eventstore import keys
from service.eventstore.store import EVENTS_TABLE, StoreUnavailable, ensure_store, opened

_EVENTS: Final = sql.Identifier(INTERNAL, EVENTS_TABLE)
_READ: Final = sql.SQL(
    "SELECT notification_id, originator_id, state FROM ("
    "SELECT notification_id, originator_id, state, "
    "sum(octet_length(state)) OVER (ORDER BY notification_id) AS upto FROM {} "
    "WHERE notification_id > %s ORDER BY notification_id LIMIT %s) batch "
    "WHERE upto - octet_length(state) < %s ORDER BY notification_id"
).format(_EVENTS)


class StoreSource:
    """Stored deliveries for the runner, the rebuilds and the status (a DeliverySource)."""

    # The library's recorder NOTIFYs a channel named after its table.
    channel: Final = EVENTS_TABLE

    def __init__(self) -> None:
        self._keys = keys.KeyCache()  # shared by the runner's threads (it locks)

    def prepare(self, database_url: str) -> None:
        try:
            ensure_store(database_url)
        except StoreUnavailable as error:
            raise SourceUnavailable(str(error)) from error

    def read(
        self, cur: psycopg.Cursor[Any], after: int, limit: int, budget: int
    ) -> list[StoredDelivery[StoredBody]]:
        # Binary results: the states arrive as they are, not hex to decode (a third of the
        # fetch's CPU for sealed states, which are twice the size of plaintext ones).
        rows = cur.execute(_READ, (after, limit, budget), binary=True).fetchall()
        stored = [
            StoredDelivery(position, key, stored_form.decode_body(bytes(state)))
            for position, key, state in rows
        ]
        # Decrypted here, so that the runner, rebuilds and replays all read plaintext through
        # this one port; an erased attendee's deliveries read as their skeletons.
        return opened(cur, keys.active(), stored, self._keys)

    def head(self, cur: psycopg.Cursor[Any]) -> int:
        row = cur.execute(
            sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {}").format(_EVENTS)
        ).fetchone()
        return int(row[0]) if row else 0

    def received_after(self, cur: psycopg.Cursor[Any], position: int) -> datetime | None:
        row = cur.execute(
            sql.SQL(
                "SELECT state FROM {} WHERE notification_id > %s ORDER BY notification_id LIMIT 1"
            ).format(_EVENTS),
            (position,),
        ).fetchone()
        return stored_form.decode_body(bytes(row[0])).timestamp if row else None


SOURCE: Final = StoreSource()
