"""Erasure and subject requests: what the CLI (`rollcall erase`, `rollcall subject`) and the
admin API (DELETE /v1/events/{event}/attendees/{id}, /v1/subjects) share.

An erasure destroys the attendee's data key and records itself in the store (one transaction
under intake's lock, service/eventstore/store.py), scrubs every version of the roster and of
its history now (the live one, as-of snapshots, builds in progress), then waits a little for the
live views to fold the erasure, so that the receipt can say they have.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
import psycopg
from psycopg.rows import dict_row

from domain import deliveries as stored_form
from domain.privacy import ERASURE
from projections import roster, roster_history
from projections.registry import VIEW_NAMES, VIEWS
from projections.schema import ANALYTICS, INTERNAL, VIEWS_SCHEMA, versions
from projections.source import StoredDelivery
from projections.tracking import positions
from service.config import EventConfig
from service.eventstore import keys
from service.eventstore.store import EVENTS_TABLE, DeliveryStore, opened

_POLL: Final = 0.05
_decode_json: Final = msgspec.json.Decoder()


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """What an organiser files: who was erased, when, by whom, where it is recorded, and
    whether the views had folded it when this was answered."""

    status: str = "erased"
    event: str
    attendee_id: str
    erased_at: datetime
    erased_by: str
    position: int  # the erasure's own record in the event store
    receipt: str
    roster_versions_scrubbed: int  # live, as-of and building versions that held a row
    views_caught_up: bool  # every live view has folded the erasure
    # Deliveries stored before encryption existed, rewritten as skeletons (DeliveryStore.erase).
    plaintext_rewritten: int = 0


class Lifted(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to lifting an erasure's block: `lifted`, or `not_erased` if there was none."""

    status: str
    event: str
    attendee_id: str


def erase(
    store: DeliveryStore,
    database_url: str,
    slug: str,
    attendee_id: str,
    by: str,
    wait: float,
    quarantined: list[str] | None = None,
) -> Receipt:
    """Erase an attendee of a JTE event (see the module docstring); `by` names the operator
    or token, never a person's data."""
    emails = _emails(database_url, slug, attendee_id)
    erased = store.erase(slug, attendee_id, by, emails, quarantined)
    scrubbed = scrub_versions(database_url, slug, attendee_id)
    caught_up = wait_for_views(database_url, erased.position, wait)
    return Receipt(
        event=slug,
        attendee_id=attendee_id,
        erased_at=erased.erased_at,
        erased_by=by,
        position=erased.position,
        receipt=erased.receipt,
        roster_versions_scrubbed=scrubbed,
        views_caught_up=caught_up,
        plaintext_rewritten=erased.plaintext_rewritten,
    )


def lift(database_url: str, slug: str, attendee_id: str) -> Lifted:
    """Lift the block an erasure left on an attendee: what JTE sends about them from now on is
    kept again, under a new data key (what was erased stays erased)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        lifted = keys.lift(conn, slug, attendee_id)
    return Lifted(status="lifted" if lifted else "not_erased", event=slug, attendee_id=attendee_id)


def _emails(database_url: str, slug: str, attendee_id: str) -> list[str]:
    """The attendee's email as the roster has it (to find quarantined deliveries naming it)."""
    with psycopg.connect(database_url) as conn:
        try:
            row = conn.execute(
                f"SELECT email FROM {ANALYTICS}.roster WHERE event = %s AND attendee_id = %s",
                (slug, attendee_id),
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return []
    return [row[0]] if row and row[0] else []


def scrub_versions(database_url: str, slug: str, attendee_id: str) -> int:
    """Scrub the attendee from every roster version whose table exists, and from every period
    of every version of the roster's history; how many roster versions had them."""
    count = 0
    with psycopg.connect(database_url) as conn:
        for scrub, view in (
            (roster.scrub, roster.RosterView.name),
            (roster_history.scrub, roster_history.RosterHistoryView.name),
        ):
            try:
                found = versions(conn, view)
            except psycopg.errors.UndefinedTable:
                return count
            for version in found:
                name = f"{VIEWS_SCHEMA}.{VIEWS[view].tables[0]}_v{version.version}"
                exists = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
                if exists is None or exists[0] is None:
                    continue
                with conn.transaction():
                    scrubbed = scrub(conn.cursor(), version, slug, attendee_id)
                count += scrubbed if view == roster.RosterView.name else 0
    return count


def wait_for_views(database_url: str, position: int, seconds: float) -> bool:
    """Whether every live view reaches `position` within `seconds`."""
    deadline = time.monotonic() + seconds
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            try:
                live = [v for v in versions(conn) if v.state == "live"]
            except psycopg.errors.UndefinedTable:
                return False
            names = {v.view for v in live}
            with conn.cursor() as cur:
                reached = positions(cur, live)
            if names >= set(VIEW_NAMES) and all(p >= position for p in reached.values()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)


# --- Subject requests ------------------------------------------------------------------------


class Subject(msgspec.Struct, frozen=True, kw_only=True):
    """One (JTE event, attendee id) an email address was found with."""

    event: str
    attendee_id: str


class Subjects(msgspec.Struct, frozen=True, kw_only=True):
    """Who carried an email address (a subject request's first step)."""

    email_found: bool
    subjects: list[Subject]


class SubjectData(msgspec.Struct, frozen=True, kw_only=True):
    """Everything held about one attendee: their deliveries (decrypted) and view rows."""

    event: str
    attendee_id: str
    erased: bool
    roster: dict[str, Any] | None
    payments: list[dict[str, Any]]
    presence: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]


class SubjectExport(msgspec.Struct, frozen=True, kw_only=True):
    """An access request's answer (GDPR Art. 15)."""

    generated_at: datetime
    subjects: list[SubjectData]


def find(database_url: str, keyring: keys.Keyring, email: str) -> list[Subject]:
    """The attendees whose deliveries carried this email, in every JTE event."""
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        return [Subject(event=s, attendee_id=a) for s, a in keys.find_by_email(cur, keyring, email)]


def export(database_url: str, keyring: keys.Keyring, email: str) -> SubjectExport:
    """Everything held about the person with this email (decrypted deliveries, view rows)."""
    found = find(database_url, keyring, email)
    with psycopg.connect(database_url) as conn:
        subjects = [_subject_data(conn, keyring, s.event, s.attendee_id) for s in found]
    return SubjectExport(generated_at=datetime.now(UTC), subjects=subjects)


def _subject_data(
    conn: psycopg.Connection[Any], keyring: keys.Keyring, slug: str, attendee_id: str
) -> SubjectData:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT to_jsonb(r) AS row FROM {ANALYTICS}.roster r "
            "WHERE event = %s AND attendee_id = %s",
            (slug, attendee_id),
        ).fetchall()
        payments = cur.execute(
            f"SELECT to_jsonb(p) AS row FROM {ANALYTICS}.payments p "
            "WHERE event = %s AND attendee_id = %s ORDER BY paid_at",
            (slug, attendee_id),
        ).fetchall()
        presence = cur.execute(
            f"SELECT to_jsonb(p) AS row FROM {ANALYTICS}.presence p "
            "WHERE event = %s AND attendee_id = %s",
            (slug, attendee_id),
        ).fetchall()
    with conn.cursor() as cur:
        stored = cur.execute(
            f"SELECT e.notification_id, e.originator_id, e.state "
            f"FROM {ANALYTICS}.attendee_deliveries h JOIN {INTERNAL}.{EVENTS_TABLE} e "
            "ON e.notification_id = h.position WHERE h.event = %s AND h.attendee_id = %s "
            "ORDER BY e.notification_id",
            (slug, attendee_id),
        ).fetchall()
        deliveries = opened(
            cur,
            keyring,
            [StoredDelivery(p, k, stored_form.decode(bytes(s))) for p, k, s in stored],
        )
        erased = keys.wrapped_keys(cur, [(slug, keys.ATTENDEE, attendee_id)])
    return SubjectData(
        event=slug,
        attendee_id=attendee_id,
        erased=erased.get((slug, keys.ATTENDEE, attendee_id), b"") is None,
        roster=rows[0]["row"] if rows else None,
        payments=[r["row"] for r in payments],
        presence=[r["row"] for r in presence],
        deliveries=[_delivery(d) for d in deliveries if d.state.verified_by != ERASURE],
    )


def _delivery(stored: StoredDelivery[stored_form.DeliveryState]) -> dict[str, Any]:
    state = stored.state
    try:
        body: Any = _decode_json.decode(state.body)
    except msgspec.DecodeError:
        body = state.body.decode("utf-8", "replace")
    return {
        "position": stored.position,
        "received_at": state.timestamp,
        "event_type": state.event_type,
        "occurred_at": state.occurred_at,
        "delivery_id": state.delivery_id,
        "erased": state.sealed is not None,
        "body": body,
    }


# --- Retention -------------------------------------------------------------------------------


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    """When a JTE event's personal data goes (retain_personal_data_days after its last
    delivery), and how many attendees still have theirs."""

    event: str
    retain_days: int
    last_delivery_at: datetime | None
    erase_after: datetime | None
    attendees_with_data: int


def retained(events: Mapping[str, EventConfig]) -> dict[str, int]:
    """The events with a retention period, and its days."""
    return {
        slug: event.retain_personal_data_days
        for slug, event in events.items()
        if event.retain_personal_data_days is not None
    }


def retention(database_url: str, retain: dict[str, int]) -> list[Retention]:
    """Where each event with a retention period stands."""
    out = []
    with psycopg.connect(database_url) as conn:
        for slug, days in sorted(retain.items()):
            last = _last_delivery(conn, slug)
            count = conn.execute(
                f"SELECT count(*) FROM {INTERNAL}.{keys.KEYS_TABLE} "
                "WHERE slug = %s AND kind = 'a' AND wrapped IS NOT NULL",
                (slug,),
            ).fetchone()
            out.append(
                Retention(
                    event=slug,
                    retain_days=days,
                    last_delivery_at=last,
                    erase_after=last + timedelta(days=days) if last is not None else None,
                    attendees_with_data=int(count[0]) if count else 0,
                )
            )
    return out


def sweep(store: DeliveryStore, database_url: str, retain: dict[str, int], now: datetime) -> int:
    """Erase every attendee of each event past its retention period (and the event's
    quarantined deliveries); how many attendees were erased."""
    erased = 0
    for state in retention(database_url, retain):
        if state.erase_after is None or now < state.erase_after or not state.attendees_with_data:
            continue
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                f"SELECT kind, subject FROM {INTERNAL}.{keys.KEYS_TABLE} "
                "WHERE slug = %s AND wrapped IS NOT NULL ORDER BY kind, subject",
                (state.event,),
            ).fetchall()
        quarantined = [subject for kind, subject in rows if kind == keys.DELIVERY]
        by = f"retention:{state.retain_days}d"
        for kind, subject in rows:
            if kind == keys.ATTENDEE:
                erase(store, database_url, state.event, subject, by, 0.0, quarantined)
                quarantined = []
                erased += 1
    return erased


def _last_delivery(conn: psycopg.Connection[Any], slug: str) -> datetime | None:
    """When the event's last delivery about an attendee was received (as the views know)."""
    try:
        row = conn.execute(
            f"SELECT e.state FROM {INTERNAL}.{EVENTS_TABLE} e WHERE e.notification_id = "
            f"(SELECT max(position) FROM {ANALYTICS}.attendee_deliveries WHERE event = %s)",
            (slug,),
        ).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return stored_form.decode_body(bytes(row[0])).timestamp if row else None
