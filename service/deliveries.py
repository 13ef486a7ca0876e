"""The delivery log: stored deliveries (accepted, quarantined) and the intake log's entries
(refusals, duplicates) in one list, newest first, and one stored delivery in detail.

Read by GET /v1/deliveries (admin) and `rollcall deliveries`. Stored deliveries are decoded in
Python through the stored form's codec (domain/deliveries.py), never filtered as JSON in SQL, so
the log reads whatever that codec reads; a page scans at most SCAN_ROWS of them and, when the
filter is that rare, ends early with a cursor to go on from (an attendee filter uses the
roster's index instead).
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any, Final, Literal
from uuid import UUID

import msgspec
import psycopg

from domain import deliveries as stored_form
from domain.interpret import Interpreted, interpret
from projections.roster import ATTENDEE_DELIVERIES
from projections.schema import ANALYTICS, DEAD_LETTERS, INTERNAL
from projections.source import StoredDelivery
from projections.status import read_status
from service import intake_log
from service.eventstore import keys
from service.eventstore.source import SOURCE
from service.eventstore.store import EVENTS_TABLE, opened

Outcome = Literal["accepted", "quarantined", "duplicate", "rejected"]
OUTCOMES: Final = ("accepted", "quarantined", "duplicate", "rejected")
SCAN_ROWS: Final = 20_000  # stored deliveries a page reads at most
_BATCH: Final = 500
# Positions follow receipt closely but not exactly (batches commit in order; their stamps are
# taken before): a scan bounded below by time stops only this far past the bound.
_SLACK: Final = timedelta(minutes=1)
_EVENTS: Final = f"{INTERNAL}.{EVENTS_TABLE}"
_LOG_STORED = ("accepted", "quarantined")
_LOG_ONLY = ("duplicate", "rejected")


class Filters(msgspec.Struct, frozen=True, kw_only=True):
    event: str | None = None
    outcome: Outcome | None = None
    since: datetime | None = None  # received at or after
    until: datetime | None = None  # received before
    attendee: str | None = None


class LogItem(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the delivery log: a stored delivery (`key`, `position`) or an intake log
    entry (`log_id`), with the same fields where both have them."""

    received_at: datetime
    event: str
    outcome: Outcome
    status: int
    key: str | None = None  # a stored delivery's key (GET /v1/deliveries/{key}); a duplicate's
    position: int | None = None
    log_id: int | None = None
    delivery_id: str | None = None
    event_type: str | None = None
    attendee_id: str | None = None
    reason: str | None = None  # why quarantined or refused
    path: str | None = None
    body_size: int | None = None
    headers: list[str] = []  # names only
    shapes: dict[str, str] = {}  # refusals: the shape of unusual headers' values
    peer: str | None = None


class LogPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of the delivery log; pass `next_cursor` back as `cursor` for the next one."""

    items: list[LogItem]
    next_cursor: str | None
    scanned: int  # stored deliveries read for this page (at most SCAN_ROWS)


class ViewApplication(msgspec.Struct, frozen=True, kw_only=True):
    """What one view did with a stored delivery."""

    view: str
    state: Literal["applied", "pending", "dead_lettered", "skipped", "no_live_version"]
    error: str | None = None


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """How the current parser reads the body (a rebuild would read it so)."""

    event_type: str | None
    attendee_id: str | None
    occurred_at: datetime | None
    unreadable: str | None


class DeliveryDetail(msgspec.Struct, frozen=True, kw_only=True):
    """One stored delivery: what was kept, how intake read it, how it reads now, and which
    views applied it."""

    key: str
    position: int
    received_at: datetime
    event: str
    outcome: Outcome
    verified_by: str
    headers: dict[str, str]  # those kept (never a secret or a signature)
    body: str | None  # the exact bytes as UTF-8 text, if they are
    body_base64: str  # the exact bytes
    delivery_id: str | None
    event_type: str | None
    attendee_id: str | None
    occurred_at: datetime | None
    parser_version: int
    quarantine_reason: str | None
    replay_of: str | None
    reading_now: Reading
    views: list[ViewApplication]


def page(
    conn: psycopg.Connection[Any],
    filters: Filters,
    limit: int,
    cursor: tuple[int, int] | None,
) -> tuple[list[LogItem], tuple[int, int] | None, int]:
    """Up to `limit` items newest first, the cursor after them (None at the end), and how
    many stored deliveries were read. A cursor is (stored position, log id) to read below;
    0 means that side is done."""
    stored_below, log_below = cursor if cursor is not None else (_head(conn) + 1, 2**62)
    stored: list[LogItem] = []
    frontier: datetime | None = None  # the stored side's scan stopped here (not exhausted)
    scanned = 0
    if stored_below > 0 and filters.outcome not in _LOG_ONLY:
        stored, stored_next, scanned, frontier = _stored(conn, filters, stored_below, limit + 1)
    else:
        stored_next = 0
    logged: list[LogItem] = []
    if log_below > 0 and filters.outcome not in _LOG_STORED and filters.attendee is None:
        logged = [
            _log_item(e)
            for e in intake_log.read(
                conn,
                before=log_below,
                limit=limit + 1,
                event=filters.event,
                outcome=filters.outcome,
                since=filters.since,
                until=filters.until,
            )
        ]
        if frontier is not None:
            # Older than where the stored scan stopped: those come after it, on a later page.
            logged = [item for item in logged if item.received_at >= frontier]
    merged = sorted(stored + logged, key=lambda item: item.received_at, reverse=True)
    taken = merged[:limit]
    stored_taken = [i.position for i in taken if i.position is not None and i.log_id is None]
    log_taken = [i.log_id for i in taken if i.log_id is not None]
    next_stored = _next(stored_below, stored_taken, len(stored), stored_next)
    log_done = len(logged) < limit + 1 and len(log_taken) == len(logged) and frontier is None
    next_log = 0 if log_done or log_below == 0 else (min(log_taken) if log_taken else log_below)
    if filters.outcome in _LOG_STORED or filters.attendee is not None:
        next_log = 0
    following = (next_stored, next_log) if (next_stored or next_log) else None
    return taken, following, scanned


def _next(below: int, taken: list[int], found: int, scanned_to: int) -> int:
    """Where the stored side goes on: after the last item taken, or where its scan stopped."""
    if len(taken) < found:
        return min(taken) if taken else below
    return scanned_to


def _head(conn: psycopg.Connection[Any]) -> int:
    with conn.cursor() as cur:
        return SOURCE.head(cur)


def _stored(
    conn: psycopg.Connection[Any], filters: Filters, below: int, wanted: int
) -> tuple[list[LogItem], int, int, datetime | None]:
    """Matching stored deliveries below position `below`, newest first: the items, where the
    next scan starts (0: nothing left), rows read, and the time the scan stopped at if it
    stopped before the end."""
    found: list[LogItem] = []
    scanned = 0
    position = below
    if filters.attendee is not None:
        return _by_attendee(conn, filters, below, wanted)
    while len(found) < wanted and scanned < SCAN_ROWS:
        rows = conn.execute(
            f"SELECT notification_id, originator_id, state FROM {_EVENTS} "
            "WHERE notification_id < %s ORDER BY notification_id DESC LIMIT %s",
            (position, _BATCH),
        ).fetchall()
        for number, key, state in rows:
            scanned += 1
            position = number
            delivery = stored_form.decode(bytes(state))
            if filters.since is not None and delivery.timestamp < filters.since - _SLACK:
                return found, 0, scanned, None  # older than the range from here on
            item = _stored_item(number, key, delivery)
            if _matches(item, filters):
                found.append(item)
                if len(found) >= wanted:
                    return found, number, scanned, None
        if len(rows) < _BATCH:
            return found, 0, scanned, None
    if not found and scanned == 0:
        return found, 0, scanned, None
    frontier = stored_form.decode(
        bytes(
            conn.execute(
                f"SELECT state FROM {_EVENTS} WHERE notification_id = %s",
                (position,),
            ).fetchone()[0]  # type: ignore[index]
        )
    ).timestamp
    return found, position, scanned, frontier


def _by_attendee(
    conn: psycopg.Connection[Any], filters: Filters, below: int, wanted: int
) -> tuple[list[LogItem], int, int, datetime | None]:
    """An attendee's deliveries, by the roster's index of them (quarantined ones name no
    attendee the parser could read, so they are not among them)."""
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f"{ANALYTICS}.{ATTENDEE_DELIVERIES}",)
    ).fetchone()
    if not (exists and exists[0]):
        return [], 0, 0, None
    args: list[Any] = [filters.attendee, below]
    event_clause = ""
    if filters.event is not None:
        event_clause = "AND h.event = %s "
        args.append(filters.event)
    rows = conn.execute(
        f"SELECT e.notification_id, e.originator_id, e.state "
        f"FROM {ANALYTICS}.{ATTENDEE_DELIVERIES} h "
        f"JOIN {_EVENTS} e ON e.notification_id = h.position "
        f"WHERE h.attendee_id = %s AND h.position < %s {event_clause}"
        "ORDER BY h.position DESC LIMIT %s",
        (*args, SCAN_ROWS),
    ).fetchall()
    found = []
    for scanned, (number, key, state) in enumerate(rows, 1):
        item = _stored_item(number, key, stored_form.decode(bytes(state)))
        if _matches(item, filters):
            found.append(item)
            if len(found) >= wanted:
                return found, number, scanned, None
    return found, 0, len(rows), None


def _stored_item(position: int, key: UUID, delivery: stored_form.DeliveryState) -> LogItem:
    quarantined = delivery.quarantine_reason is not None
    return LogItem(
        received_at=delivery.timestamp,
        event=delivery.slug,
        outcome="quarantined" if quarantined else "accepted",
        status=202 if quarantined else 200,
        key=str(key),
        position=position,
        delivery_id=delivery.delivery_id,
        event_type=delivery.event_type,
        attendee_id=delivery.attendee_id,
        reason=delivery.quarantine_reason,
        body_size=len(delivery.body),
        headers=sorted(delivery.headers),
    )


def _matches(item: LogItem, filters: Filters) -> bool:
    return (
        (filters.event is None or item.event == filters.event)
        and (filters.outcome is None or item.outcome == filters.outcome)
        and (filters.since is None or item.received_at >= filters.since)
        and (filters.until is None or item.received_at < filters.until)
        and (filters.attendee is None or item.attendee_id == filters.attendee)
    )


def _log_item(entry: intake_log.Entry) -> LogItem:
    return LogItem(
        received_at=entry.at,
        event=entry.event,
        outcome="duplicate" if entry.outcome == "duplicate" else "rejected",
        status=entry.status,
        key=entry.delivery_key,
        log_id=entry.id,
        reason=entry.reason,
        path=entry.path,
        body_size=entry.body_size,
        headers=entry.headers.names,
        shapes=entry.headers.shapes,
        peer=entry.peer,
    )


def detail(conn: psycopg.Connection[Any], key: UUID) -> DeliveryDetail | None:
    """One stored delivery by its key, or None."""
    row = conn.execute(
        f"SELECT notification_id, state FROM {_EVENTS} WHERE originator_id = %s",
        (key,),
    ).fetchone()
    if row is None:
        return None
    position, state = row
    # The body as sent, decrypted for the admin who asks; an erased person's stays a skeleton.
    stored = StoredDelivery(position, key, stored_form.decode(bytes(state)))
    with conn.cursor() as cur:
        delivery = opened(cur, keys.active(), [stored])[0].state
    reading = interpret(delivery.body)
    now = (
        Reading(
            event_type=reading.event_type,
            attendee_id=reading.attendee_id,
            occurred_at=reading.occurred_at,
            unreadable=None,
        )
        if isinstance(reading, Interpreted)
        else Reading(event_type=None, attendee_id=None, occurred_at=None, unreadable=reading.reason)
    )
    try:
        text: str | None = delivery.body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return DeliveryDetail(
        key=str(key),
        position=position,
        received_at=delivery.timestamp,
        event=delivery.slug,
        outcome="quarantined" if delivery.quarantine_reason is not None else "accepted",
        verified_by=delivery.verified_by,
        headers=delivery.headers,
        body=text,
        body_base64=base64.b64encode(delivery.body).decode(),
        delivery_id=delivery.delivery_id,
        event_type=delivery.event_type,
        attendee_id=delivery.attendee_id,
        occurred_at=delivery.occurred_at,
        parser_version=delivery.parser_version,
        quarantine_reason=delivery.quarantine_reason,
        replay_of=str(delivery.replay_of) if delivery.replay_of else None,
        reading_now=now,
        # Views skip a delivery quarantined on arrival, and one the parser cannot read now.
        views=_applications(
            conn,
            position,
            skipped=delivery.quarantine_reason is not None or not isinstance(reading, Interpreted),
        ),
    )


def _applications(
    conn: psycopg.Connection[Any], position: int, *, skipped: bool
) -> list[ViewApplication]:
    """Each view's dealing with the delivery at `position`, by its live version."""
    registry = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f"{INTERNAL}.view_versions",)
    ).fetchone()
    if not (registry and registry[0]):
        return []
    letters = {
        (view, version): error
        for view, version, error in conn.execute(
            f"SELECT view, version, error FROM {INTERNAL}.{DEAD_LETTERS} WHERE position = %s",
            (position,),
        ).fetchall()
    }
    applications = []
    for status in read_status(conn, SOURCE):
        if status.version is None:
            applications.append(ViewApplication(view=status.view, state="no_live_version"))
        elif status.position < position:
            applications.append(ViewApplication(view=status.view, state="pending"))
        elif (status.view, status.version) in letters:
            error = letters[(status.view, status.version)]
            applications.append(
                ViewApplication(view=status.view, state="dead_lettered", error=error)
            )
        elif skipped:
            applications.append(ViewApplication(view=status.view, state="skipped"))
        else:
            applications.append(ViewApplication(view=status.view, state="applied"))
    return applications
