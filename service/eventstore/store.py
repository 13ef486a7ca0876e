"""The event store: each verified delivery is one immutable event in eventsourcing's recorder.

A delivery's event id is its delivery key, so the database's primary key is the dedupe check:
a second delivery with the same key conflicts and is reported as a duplicate, never appended.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final
from uuid import UUID, uuid5

import asyncpg
import msgspec
import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.application import Application
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    PersistenceError,
    StoredEvent,
    Transcoder,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import Environment, EnvType, get_topic, register_topic
from psycopg import Cursor, sql
from psycopg.rows import DictRow, tuple_row

from domain import deliveries as stored_form
from domain.interpret import PARSER_VERSION, Interpreted, interpret
from domain.privacy import ERASURE, bare_skeleton, quarantine_skeleton, skeleton
from projections.schema import INTERNAL, may_migrate
from projections.source import StoredDelivery
from projections.tracking import ConnectionParams, connection_params
from service.eventstore import keys
from service.eventstore.database import Unusable, eventsourcing_env

# eventsourcing names the table after the application (Deliveries), in rollcall's schema.
EVENTS_TABLE: Final = "deliveries_events"
_SETUP_LOCK: Final = 0x726F6C6C  # advisory lock id: one process sets the schema up at a time
# Takes the library's table lock with its owner's rights (see IntakeRecorder._lock_and_notify).
LOCK_FUNCTION: Final = "lock_deliveries"
_LOCK_FUNCTION: Final = sql.Identifier(INTERNAL, LOCK_FUNCTION)
# Rewrites an erased attendee's deliveries stored before encryption as skeletons: the only
# UPDATE the append-only trigger lets through (while it sets _SCRUBBING).
SCRUB_FUNCTION: Final = "scrub_plaintext"
_SCRUB_FUNCTION: Final = sql.Identifier(INTERNAL, SCRUB_FUNCTION)
_SKELETON_FUNCTION: Final = sql.Identifier(INTERNAL, "is_skeleton")
_SCRUBBING: Final = "rollcall.scrubbing"
_SCRUB_CALL: Final = sql.SQL("SELECT {}(%s, %s, %s::text[], %s::bigint[], %b::bytea[])").format(
    _SCRUB_FUNCTION
)
# While the database is unreachable, ask it again at most this often (seconds).
_PROBE_INTERVAL: Final = 0.25
# How many unacknowledged keys (see DeliveryStore.unacknowledged) are remembered at most.
_UNACKNOWLEDGED_MAX: Final = 65_536
# How often a batch is sealed again after its keys turned out stale (an erasure, a race).
_STALE_RETRIES: Final = 5
_EMAILS_SEEN_MAX: Final = 100_000
_LOOK_UP_MAX: Final = 100_000
# Opened data keys a writer keeps (about 2.7 kB each with their cipher contexts): several times
# a big event's attendees. A server that runs for months meets ever more of them; past this the
# cache starts again, and a miss costs a lookup in its batch's one query.
_KEYS_MAX: Final = 20_000
_ERASURE_NAMESPACE: Final = UUID("9b7e1d2c-4f3a-5b6c-8d9e-0a1b2c3d4e5f")


# Intake attaches what it read from a delivery under this attribute (not stored), so that the
# store does not parse the body again to seal it.
READING: Final = "_reading"


def with_reading(delivery: DeliveryRecorded, reading: Interpreted | None) -> DeliveryRecorded:
    """The delivery, carrying intake's reading of it to the store."""
    delivery.__dict__[READING] = reading
    return delivery


def _changed(delivery: DeliveryRecorded, **changes: Any) -> DeliveryRecorded:
    """A copy with some fields changed (dataclasses.replace costs a constructor call)."""
    copy = object.__new__(DeliveryRecorded)
    copy.__dict__.update(delivery.__dict__, **changes)
    copy.__dict__.pop(READING, None)
    return copy


class StoreUnavailable(Exception):
    """The database cannot take the write now; the sender should retry later."""


@dataclass(frozen=True)  # the metaclass makes it one too; this tells type checkers
class DeliveryRecorded(DomainEvent):
    """A verified JTE delivery, byte for byte, and what intake read from it; timestamp = receipt.

    Its fields are domain.deliveries.DeliveryState's, which is how its state is stored."""

    slug: str
    body: bytes
    headers: dict[str, str]
    verified_by: str
    delivery_id: str | None
    event_type: str | None
    attendee_id: str | None
    occurred_at: datetime | None
    parser_version: int
    quarantine_reason: str | None
    replay_of: UUID | None = None
    sealed: bytes | None = None


# Deliveries stored before the event store became a package of its own carry this topic.
register_topic("service.store:DeliveryRecorded", DeliveryRecorded)


class DeliveryTranscoder(Transcoder):
    """The stored form's one codec (domain.deliveries): fast, exact, and readable with SQL."""

    def encode(self, obj: Any) -> bytes:
        # The mapper hands over a copy of the event's attributes: what intake read (see
        # READING) is not part of the stored form.
        obj.pop(READING, None)
        return stored_form.encode(obj)

    def decode(self, data: bytes) -> Any:
        return msgspec.structs.asdict(stored_form.decode(data))


class IntakeRecorder(PostgresApplicationRecorder):
    """The library's recorder (same transaction, table lock and NOTIFY) with three changes.

    - An insert is tried once: intake answers 503 and JTE retries, rather than holding a request
      through ten reconnection attempts.
    - Its transaction pins synchronous_commit on, and takes the table lock through a function
      of the table's owner (so the runtime role needs no right to change rows).
    - The rows travel as four plain arrays instead of one array of composites, which psycopg
      dumps in Python: a third less CPU per event (measured).
    - No pipeline mode: psycopg 3.3's Pipeline.sync() can stop flushing before a message larger
      than the socket buffer is fully sent, then wait forever for an answer while the server
      waits for the rest (reproduced with 500-delivery batches; cf. psycopg issue #685).
    """

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        self._insert_arrays = sql.SQL(
            "INSERT INTO {}.{} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[]) "
            "RETURNING notification_id"
        ).format(sql.Identifier(datastore.schema), sql.Identifier(events_table_name))
        # The same insert behind the data-key check (keys.add_keys_call), in one round trip:
        # the check runs once, under the table lock, before any row goes in.
        self._guarded_insert = sql.SQL(
            "INSERT INTO {}.{} (originator_id, originator_version, topic, state) "
            "SELECT u.* FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[]) AS u, "
            "guard WHERE guard.ok RETURNING notification_id"
        ).format(sql.Identifier(datastore.schema), sql.Identifier(events_table_name))
        set_lock_timeout = self.lock_table_statements[0]
        self._lock_and_notify = sql.SQL("; ").join(
            [
                set_lock_timeout,
                # A 2xx promises the delivery is on disk: whatever the server, database or role
                # says about synchronous_commit, this transaction's commit waits for the flush
                # (remote_apply, stronger still, is left as it is).
                sql.SQL(
                    "SELECT set_config('synchronous_commit', 'on', true) "
                    "WHERE current_setting('synchronous_commit') <> 'remote_apply'"
                ),
                # The library's LOCK TABLE … IN EXCLUSIVE MODE, through a function of the
                # table's owner: taking that lock directly needs UPDATE, DELETE or TRUNCATE
                # rights on the table, which the runtime role must not have.
                sql.SQL("SELECT {}()").format(_LOCK_FUNCTION),
                sql.SQL("NOTIFY {}").format(sql.Identifier(self.channel_name)),
            ]
        )

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        if not stored_events:
            return []
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            self._insert_events(curs, stored_events, **kwargs)
            self._insert_stored_events(curs, stored_events, **kwargs)
            return self._fetch_ids_after_insert_events(curs, stored_events, **kwargs)

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # One round trip for the lock timeout, the table lock and the notification.
        curs.execute(self._lock_and_notify)
        columns = (
            [event.originator_id for event in stored_events],
            [event.originator_version for event in stored_events],
            [event.topic for event in stored_events],
            [event.state for event in stored_events],
        )
        erase = kwargs.get("erase")
        if erase is not None:
            late = kwargs.get("late")
            if late is not None:
                # Under the lock now: quarantined deliveries stored since the erasure's first
                # look are shredded with the rest.
                slug, attendee_id, by, quarantined = erase
                erase = (slug, attendee_id, by, [*quarantined, *late(curs.connection)])
            curs.execute(keys.erase_call(), erase)
        scrub = kwargs.get("scrub")
        if scrub is not None:
            curs.execute(_SCRUB_CALL, scrub)
        crypto = kwargs.get("crypto")
        if crypto is None:
            curs.execute(self._insert_arrays, columns)
        else:
            call, args = crypto
            guarded = sql.Composed(
                [sql.SQL("WITH guard AS MATERIALIZED ("), call, sql.SQL(") "), self._guarded_insert]
            )
            curs.execute(guarded, (*args, *columns))

    def existing_positions(self, ids: Sequence[UUID]) -> dict[UUID, int]:
        """Which of these event ids are already stored, and where."""
        query = sql.SQL(
            "SELECT originator_id, notification_id FROM {}.{} WHERE originator_id = ANY(%s)"
        ).format(sql.Identifier(self.datastore.schema), sql.Identifier(self.events_table_name))
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(query, (list(ids),))
            return {row["originator_id"]: row["notification_id"] for row in curs.fetchall()}


class Deliveries(Application[UUID]):
    """The eventsourcing application owning the write model: table EVENTS_TABLE."""

    name = "Deliveries"

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        # Configured by rollcall's settings only, not by whatever POSTGRES_* is in os.environ.
        return Environment(name, dict(env or {}))

    def construct_transcoder(self) -> Transcoder:
        return DeliveryTranscoder()


class DeliveryStore:
    """Appends deliveries, deduplicated by key, and reads them back by global position."""

    def __init__(
        self,
        database_url: str,
        *,
        pool_size: int = 4,
        timeout: float = 5.0,
        keyring: keys.Keyring | None = None,
    ) -> None:
        self.keyring = keyring if keyring is not None else keys.active()
        self._app, self._reopen_env = _open(database_url, pool_size, timeout, self.keyring)
        self._recorder = _recorder(self._app)
        self._sealer = _Sealer(self.keyring)
        self._params = connection_params(database_url)
        self._health = threading.Lock()
        self._unreachable_at: float | None = None  # when the database last failed to answer
        self._unacknowledged: dict[UUID, None] = {}  # oldest first
        self._unacknowledged_lock = threading.Lock()

    def append(self, deliveries: Sequence[DeliveryRecorded]) -> list[int | None]:
        """Store deliveries in one transaction; a position each, or None where it is a duplicate."""
        self._check_reachable()
        first: dict[UUID, DeliveryRecorded] = {}
        for delivery in deliveries:
            first.setdefault(delivery.originator_id, delivery)
        positions = self._save_new(list(first.values()))
        return [
            positions.get(delivery.originator_id)
            if first[delivery.originator_id] is delivery
            else None
            for delivery in deliveries
        ]

    def _save_new(self, pending: list[DeliveryRecorded]) -> dict[UUID, int]:
        # Keys taken by earlier batches (or another process) show up as an IntegrityError:
        # drop the ones that exist and save the rest. Another writer can only add keys, so
        # each retry strictly shrinks the batch.
        connection_retries = 1
        stale_retries = _STALE_RETRIES
        settled: dict[UUID, int] = {}  # stored before, but never acknowledged
        pending = self._without_legacy_duplicates(pending)
        while pending:
            app = self._app
            try:
                sealed, crypto, commit = self._call(self._sealer.seal, self._recorder, pending)
                # The application's event store directly: Application.save() would add only
                # a runtime Protocol check per event (a quarter of the CPU here on Python
                # 3.11) before making this same call; no snapshots or notify hooks are used.
                recordings = app.events.put(sealed, crypto=crypto)
            except IntegrityError:
                existing = self._call(
                    self._recorder.existing_positions, [d.originator_id for d in pending]
                )
                if not existing:
                    raise
                settled.update(self._settle(existing))
                pending = [d for d in pending if d.originator_id not in existing]
            except (OperationalError, InterfaceError) as error:
                # The connection broke: perhaps after the commit, with only its answer lost.
                self.unacknowledged(d.originator_id for d in pending)
                # A pooled connection may have died with a database restart: one more try,
                # on fresh connections, if the database answers at all.
                if connection_retries == 0 or not self._reconnect(app):
                    raise StoreUnavailable(str(error)) from error
                connection_retries -= 1
            except PersistenceError as error:
                # An erasure (or another process) changed the data keys since this writer
                # read them: read them again and seal the batch anew.
                state = _sqlstate(error)
                if state not in (keys.STALE_KEYS, keys.KEY_RACE) or stale_retries == 0:
                    raise
                stale_retries -= 1
                if state == keys.STALE_KEYS:
                    self._sealer.forget()
                else:
                    self._sealer.lost_race()
            else:
                commit()
                stored = {r.domain_event.originator_id: r.notification.id for r in recordings}
                self._settle(stored)  # those earlier attempts had not committed after all
                return settled | stored
        return settled

    def _without_legacy_duplicates(self, pending: list[DeliveryRecorded]) -> list[DeliveryRecorded]:
        """Drop id-less deliveries stored before dedupe keys were keyed (under their bare-hash
        key): a retry of one of those is still a duplicate. Only while such deliveries may
        exist (the store has a cutover) does this cost a lookup, and only for id-less ones."""
        cutover = self._call(self._sealer.cutover, self._recorder)
        if not cutover:
            return pending
        legacy = {
            stored_form.legacy_delivery_key(d.slug, d.body): d.originator_id
            for d in pending
            if d.delivery_id is None and d.replay_of is None and d.verified_by != ERASURE
        }
        if not legacy:
            return pending
        found = self._call(self._recorder.existing_positions, list(legacy))
        duplicates = {legacy[key] for key in found}
        return [d for d in pending if d.originator_id not in duplicates]

    def erase(
        self,
        slug: str,
        attendee_id: str,
        by: str,
        mentions: Sequence[str] = (),
        quarantined: list[str] | None = None,
    ) -> Erased:
        """Destroy an attendee's data key and record the erasure, in one transaction under the
        intake lock: every delivery about them stored before is unreadable from now on, and
        what arrives after is kept without its personal content (see _Sealer.seal). So are the
        quarantined deliveries of the event whose body names them (their id, one of `mentions`
        such as their email, or any email they were seen with), or else the `quarantined`
        delivery keys given. Deliveries stored before encryption are rewritten as skeletons."""
        late = None
        if quarantined is None:
            names = [attendee_id, *mentions]
            head = self.head()
            quarantined = self._call(self._quarantined_about, slug, names, 0)
            late = partial(self._quarantined_about, slug, names, head)
        # Deliveries stored before encryption hold the person in the clear: rewritten as the
        # skeletons a sealed delivery keeps, in the erasure's transaction.
        rewrites = self._call(self._plaintext_about, slug, attendee_id, mentions)
        now = datetime.now(UTC)
        record = DeliveryRecorded(
            originator_id=uuid5(_ERASURE_NAMESPACE, f"{slug}\n{attendee_id}\n{now.isoformat()}"),
            originator_version=1,
            timestamp=now,
            slug=slug,
            body=_erasure_body(slug, attendee_id, by, now),
            headers={},
            verified_by=ERASURE,
            delivery_id=None,
            event_type="AttendeeErased",
            attendee_id=attendee_id,
            occurred_at=now,
            parser_version=PARSER_VERSION,
            quarantine_reason=None,
        )
        self._check_reachable()
        try:
            (recording,) = self._app.events.put(
                [record],
                erase=(slug, attendee_id, by, quarantined),
                late=late,
                scrub=(
                    (slug, attendee_id, list(mentions), list(rewrites), list(rewrites.values()))
                    if rewrites
                    else None
                ),
            )
        except (OperationalError, InterfaceError) as error:
            raise StoreUnavailable(str(error)) from error
        self._sealer.forget()
        return Erased(
            event=slug,
            attendee_id=attendee_id,
            erased_at=now,
            erased_by=by,
            position=recording.notification.id,
            receipt=str(record.originator_id),
            plaintext_rewritten=len(rewrites),
        )

    def _plaintext_about(
        self, slug: str, attendee_id: str, mentions: Sequence[str]
    ) -> dict[int, bytes]:
        """The deliveries stored before encryption (up to the cutover) that hold the attendee
        in the clear, each with its state rewritten as a skeleton: theirs, and the event's
        quarantined ones about them or naming them (their id, or one of `mentions`)."""
        cutover = self._sealer.cutover(self._recorder)
        if not cutover:
            return {}
        query = sql.SQL(
            "SELECT notification_id, state FROM {} WHERE notification_id <= %s "
            "AND convert_from(state, 'UTF8')::jsonb ->> 'slug' = %s "
            "AND convert_from(state, 'UTF8')::jsonb ->> 'sealed' IS NULL "
            "AND (convert_from(state, 'UTF8')::jsonb ->> 'attendee_id' = %s "
            "OR convert_from(state, 'UTF8')::jsonb ->> 'quarantine_reason' IS NOT NULL)"
        ).format(sql.Identifier(INTERNAL, EVENTS_TABLE))
        with (
            self._recorder.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as cur,
        ):
            rows = cur.execute(query, (cutover, slug, attendee_id)).fetchall()
        names = [n.encode() for n in (attendee_id, *mentions) if n]
        rewrites = {}
        for position, data in rows:
            state = stored_form.decode(bytes(data))
            if state.verified_by == ERASURE:
                continue
            if state.quarantine_reason is not None:
                if state.attendee_id != attendee_id and not any(n in state.body for n in names):
                    continue
                clear = quarantine_skeleton()
            else:
                clear = _skeleton_of(state)
            if clear != state.body:
                # The stored JSON as it is, but for the body: the function checks nothing
                # else changed.
                fields = msgspec.json.decode(bytes(data))
                fields["body"] = base64.b64encode(clear).decode()
                rewrites[int(position)] = msgspec.json.encode(fields)
        return rewrites

    def _quarantined_about(
        self,
        slug: str,
        names: Sequence[str],
        after: int,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[str]:
        """The delivery keys of the event's sealed quarantined deliveries after position
        `after` that mention any of `names` (the attendee id first) or an email address the
        attendee was seen with (a whole scan of the store: erasures are rare,
        quarantined deliveries few); on `conn` if given (inside the erasure's transaction)."""
        if conn is None:
            with self._recorder.datastore.get_connection() as pooled:
                return self._quarantined_about(slug, names, after, pooled)
        wanted = [n.encode() for n in names if n]
        query = sql.SQL(
            "SELECT notification_id, originator_id, state FROM {} WHERE notification_id > %s "
            "AND convert_from(state, 'UTF8')::jsonb ->> 'quarantine_reason' IS NOT NULL "
            "AND convert_from(state, 'UTF8')::jsonb ->> 'slug' = %s"
        ).format(sql.Identifier(INTERNAL, EVENTS_TABLE))
        with conn.cursor(row_factory=tuple_row) as cur:
            rows = cur.execute(query, (after, slug)).fetchall()
            stored = [StoredDelivery(p, k, stored_form.decode(bytes(s))) for p, k, s in rows]
            readable = opened(cur, self.keyring, [s for s in stored if s.state.sealed])
            # Any email address they were ever sent with (by its keyed hash), not only the
            # roster's current one.
            hmacs = keys.email_hmacs_of(cur, slug, names[0]) if readable else set()
        return [
            str(s.key)
            for s in readable
            if s.state.sealed is None
            and (
                any(name in s.state.body for name in wanted)
                or any(self.keyring.email_hmac(e) in hmacs for e in keys.emails_in(s.state.body))
            )
        ]

    def unacknowledged(self, keys: Iterable[UUID]) -> None:
        """Remember deliveries whose sender was told 503 although they are (or may be) stored:
        a commit whose answer was lost with the connection, or one that came after intake
        had stopped waiting. A retry is then answered with the position, as accepted: the
        503 said nothing was stored, so "duplicate" would contradict it."""
        with self._unacknowledged_lock:
            for key in keys:
                self._unacknowledged[key] = None
            while len(self._unacknowledged) > _UNACKNOWLEDGED_MAX:
                del self._unacknowledged[next(iter(self._unacknowledged))]

    def _settle(self, stored: dict[UUID, int]) -> dict[UUID, int]:
        """Forget these keys as unacknowledged; the positions of those that were."""
        with self._unacknowledged_lock:
            return {
                key: position
                for key, position in stored.items()
                if self._unacknowledged.pop(key, False) is None
            }

    def _check_reachable(self) -> None:
        """Fail at once while the database is known to be unreachable, asking it again at
        most every _PROBE_INTERVAL: waiting on the pool would hold every delivery for the
        whole store timeout, and its reconnection backoff would delay the recovery."""
        if self._unreachable_at is None:
            return
        with self._health:
            if self._unreachable_at is None:
                return  # another thread found it back
            if time.monotonic() - self._unreachable_at < _PROBE_INTERVAL or not self._answers():
                raise StoreUnavailable("the database is unreachable")
            self._reopen()

    def _reconnect(self, failed: Deliveries) -> bool:
        """After `failed`'s connection broke: True once fresh connections are ready (another
        thread may have made them), False if the database does not answer."""
        with self._health:
            if self._app is not failed:
                return True
            if not self._answers():
                return False
            self._reopen()
            return True

    def _answers(self) -> bool:
        """Whether a new connection to the database works (marking it unreachable if not)."""
        try:
            with psycopg.connect(**self._params, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            self._unreachable_at = time.monotonic()
            return False
        return True

    def _reopen(self) -> None:
        """Replace the connection pool: the old one's connections may all be dead, and it
        would reconnect only on its own exponential backoff."""
        old, self._app = self._app, Deliveries(env=self._reopen_env)
        self._recorder = _recorder(self._app)
        self._unreachable_at = None
        # In the background: closing waits for the pool's workers, which may be connecting.
        # Connections another thread still uses are closed when it gives them back.
        threading.Thread(target=old.close, name="old-pool", daemon=True).start()

    def head(self) -> int:
        """The highest position stored (0 when empty)."""
        return self._call(self._recorder.max_notification_id) or 0

    def read(self, after: int, limit: int) -> list[StoredDelivery[stored_form.DeliveryState]]:
        """Up to `limit` deliveries after a position, in position order."""
        notifications = self._call(
            self._recorder.select_notifications, after, limit, inclusive_of_start=False
        )
        stored = [
            StoredDelivery(n.id, UUID(str(n.originator_id)), stored_form.decode(n.state))
            for n in notifications
        ]
        if not any(s.state.sealed is not None for s in stored):
            return stored
        with (
            self._recorder.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as cur,
        ):
            return opened(cur, self.keyring, stored)

    def close(self) -> None:
        self._app.close()

    @staticmethod
    def _call(function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (OperationalError, InterfaceError) as error:
            raise StoreUnavailable(str(error)) from error


def ensure_store(database_url: str, *, check_key: bool = True) -> None:
    """The event store's schema, table and protections, created where missing by a session that
    migrates the schema; StoreUnavailable while the database is unreachable, MasterKeyMissing
    if this process's master key is not this database's (unless not `check_key`: `rollcall
    db setup` may run where the master key is not; the first store opened records it)."""
    app, _ = _open(database_url, 1, 5.0, keys.active() if check_key else None)
    app.close()


def _open(
    database_url: str, pool_size: int, timeout: float, keyring: keys.Keyring | None
) -> tuple[Deliveries, dict[str, str]]:
    """The application, its table set up (or found set up, by a session that may not); and
    the environment to reopen it with."""
    seconds = str(max(1, round(timeout)))
    env = eventsourcing_env(
        database_url,
        SCHEMA=INTERNAL,
        POOL_SIZE=str(pool_size),
        MAX_OVERFLOW="0",
        CONNECT_TIMEOUT=seconds,
        LOCK_TIMEOUT=seconds,
        # No ping before each use: a connection gone stale is retried once instead.
        PRE_PING="n",
        # The database-functions path skips the table lock; keep it off (DESIGN.md).
        ENABLE_DB_FUNCTIONS="n",
    )
    env |= {"APPLICATION_RECORDER_TOPIC": get_topic(IntakeRecorder), "CREATE_TABLE": "n"}
    with _setup_lock(connection_params(database_url)) as conn:
        if may_migrate(conn):
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(INTERNAL)))
            app = Deliveries(env={**env, "CREATE_TABLE": "y"})
            _protect_events_table(conn)
            keys.create_tables(conn, sql.Identifier(INTERNAL, EVENTS_TABLE))
            _create_scrub(conn)
        else:
            # The runtime role of `rollcall db setup`: its owner role made the table.
            _require_events_table(conn)
            app = Deliveries(env=env)
        try:
            if keyring is not None:
                keys.check_master_key(conn, keyring)
        except BaseException:
            app.close()
            raise
    return app, env


def _recorder(app: Deliveries) -> IntakeRecorder:
    recorder = app.recorder
    assert isinstance(recorder, IntakeRecorder)
    return recorder


@contextmanager
def _setup_lock(params: ConnectionParams) -> Iterator[psycopg.Connection[Any]]:
    """A connection holding a session advisory lock: concurrent processes set up one at a time."""
    try:
        conn = psycopg.connect(**params, autocommit=True)
    except psycopg.OperationalError as error:
        raise StoreUnavailable(str(error)) from error
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_SETUP_LOCK,))
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK,))


def _protect_events_table(conn: psycopg.Connection[Any]) -> None:
    """Make the events table append-only in the database itself: UPDATE, DELETE, TRUNCATE fail."""
    table = sql.Identifier(INTERNAL, EVENTS_TABLE)
    refuse = sql.Identifier(INTERNAL, "refuse_change")
    statements = [
        # One exception: scrub_plaintext (below) rewriting the body of a delivery stored before
        # encryption, nothing else of it, while the setting it alone sets names the row's event.
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {refuse}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF TG_OP = 'UPDATE' AND coalesce(current_setting('{guc}', true), '') <> '' THEN "
            "IF NEW.notification_id = OLD.notification_id "
            "AND NEW.originator_id = OLD.originator_id "
            "AND NEW.originator_version = OLD.originator_version AND NEW.topic = OLD.topic "
            "AND OLD.notification_id <= (SELECT cutover FROM {state} WHERE id = 1) "
            "AND (convert_from(OLD.state, 'UTF8')::jsonb - 'body') "
            "= (convert_from(NEW.state, 'UTF8')::jsonb - 'body') "
            "AND convert_from(OLD.state, 'UTF8')::jsonb ->> 'slug' = current_setting('{guc}') "
            "THEN RETURN NEW; END IF; END IF; "
            "RAISE EXCEPTION 'rollcall: stored deliveries are append-only (% refused on %)', "
            "TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege'; END $$"
        ).format(
            refuse=refuse,
            guc=sql.SQL(_SCRUBBING),
            state=sql.Identifier(INTERNAL, keys.STATE_TABLE),
        ),
        sql.SQL(
            "CREATE OR REPLACE TRIGGER append_only BEFORE UPDATE OR DELETE ON {} "
            "FOR EACH ROW EXECUTE FUNCTION {}()"
        ).format(table, refuse),
        sql.SQL(
            "CREATE OR REPLACE TRIGGER no_truncate BEFORE TRUNCATE ON {} "
            "FOR EACH STATEMENT EXECUTE FUNCTION {}()"
        ).format(table, refuse),
        # Runs with its owner's rights (the table's): see IntakeRecorder._lock_and_notify.
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {}() RETURNS void LANGUAGE sql SECURITY DEFINER "
            "SET search_path = pg_catalog AS $$ LOCK TABLE {} IN EXCLUSIVE MODE $$"
        ).format(_LOCK_FUNCTION, table),
        sql.SQL("REVOKE ALL ON FUNCTION {}() FROM PUBLIC").format(_LOCK_FUNCTION),
    ]
    for statement in statements:
        conn.execute(statement)


def _create_scrub(conn: psycopg.Connection[Any]) -> None:
    """scrub_plaintext: the one way past the append-only trigger (see DeliveryStore.erase)."""
    events = sql.Identifier(INTERNAL, EVENTS_TABLE)
    statements = [
        # Whether `body` may replace the body of the stored delivery `old` (its state as
        # jsonb) when attendee `p_id` is erased: a skeleton of the same event (same type,
        # attendee and delivery id; nothing but what domain.privacy.skeleton writes), or `{}`
        # for a quarantined delivery about them or naming them.
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {}(old jsonb, body bytea, p_id text, p_mentions text[]) "
            "RETURNS boolean LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$ "
            "DECLARE b jsonb; a jsonb; BEGIN "
            "IF old ->> 'quarantine_reason' IS NOT NULL THEN "
            "RETURN body = decode('7b7d', 'hex') AND (old ->> 'attendee_id' = p_id OR EXISTS ("
            "SELECT 1 FROM unnest(array_prepend(p_id, p_mentions)) m WHERE m <> '' AND "
            "position(convert_to(m, 'UTF8') IN decode(old ->> 'body', 'base64')) > 0)); "
            "END IF; "
            "IF old ->> 'attendee_id' IS DISTINCT FROM p_id THEN RETURN false; END IF; "
            "b := convert_from(body, 'UTF8')::jsonb; "
            "IF jsonb_typeof(b) <> 'object' OR EXISTS (SELECT 1 FROM jsonb_object_keys(b) k "
            "WHERE k NOT IN ('event', 'id', 'occurredAt', 'attendee')) "
            "OR b ->> 'event' IS DISTINCT FROM old ->> 'event_type' "
            "OR (b ? 'id' AND b ->> 'id' IS DISTINCT FROM old ->> 'delivery_id') "
            "OR length(coalesce(b ->> 'occurredAt', '')) > 64 "
            "OR jsonb_typeof(b -> 'attendee') IS DISTINCT FROM 'object' THEN RETURN false; END IF; "
            "a := b -> 'attendee'; "
            "IF a ->> 'id' IS DISTINCT FROM p_id OR EXISTS (SELECT 1 FROM jsonb_object_keys(a) k "
            "WHERE k NOT IN ('id', 'payment')) THEN RETURN false; END IF; "
            "IF a ? 'payment' AND (jsonb_typeof(a -> 'payment') <> 'object' OR EXISTS ("
            "SELECT 1 FROM jsonb_object_keys(a -> 'payment') k "
            "WHERE k NOT IN ('amount', 'currency', 'method', 'reference'))) THEN RETURN false; "
            "END IF; "
            "RETURN true; END $$"
        ).format(_SKELETON_FUNCTION),
        # With its owner's rights: only for an attendee whose key is destroyed (the erasure
        # does that first, in the same transaction), only deliveries stored before encryption
        # (up to the cutover) that are not sealed, each checked by is_skeleton; all or none.
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {scrub}(p_slug text, p_id text, p_mentions text[], "
            "p_positions bigint[], p_states bytea[]) RETURNS bigint LANGUAGE plpgsql "
            "SECURITY DEFINER SET search_path = pg_catalog AS $$ DECLARE n bigint; BEGIN "
            "IF NOT EXISTS (SELECT 1 FROM {keys} WHERE slug = p_slug AND kind = 'a' "
            "AND subject = p_id AND wrapped IS NULL) THEN "
            "RAISE EXCEPTION 'rollcall: only an erased attendee''s deliveries are rewritten' "
            "USING ERRCODE = 'insufficient_privilege'; END IF; "
            "PERFORM set_config('{guc}', p_slug, true); "
            "WITH todo AS (SELECT e.notification_id AS position, u.state, "
            "convert_from(e.state, 'UTF8')::jsonb AS old, "
            "convert_from(u.state, 'UTF8')::jsonb AS new FROM {events} e "
            "JOIN unnest(p_positions, p_states) AS u(position, state) "
            "ON e.notification_id = u.position "
            "WHERE e.notification_id <= (SELECT cutover FROM {state} WHERE id = 1)) "
            "UPDATE {events} e SET state = todo.state FROM todo "
            "WHERE e.notification_id = todo.position AND todo.old ->> 'slug' = p_slug "
            "AND todo.old ->> 'sealed' IS NULL AND todo.old ->> 'verified_by' <> '{erasure}' "
            "AND (todo.old - 'body') = (todo.new - 'body') "
            "AND {skeleton}(todo.old, decode(todo.new ->> 'body', 'base64'), p_id, p_mentions); "
            "GET DIAGNOSTICS n = ROW_COUNT; "
            "PERFORM set_config('{guc}', '', true); "
            "IF n <> cardinality(p_positions) THEN "
            "RAISE EXCEPTION 'rollcall: % of % deliveries are not an erased attendee''s "
            "plaintext to scrub', cardinality(p_positions) - n, cardinality(p_positions) "
            "USING ERRCODE = 'insufficient_privilege'; END IF; "
            "RETURN n; END $$"
        ).format(
            scrub=_SCRUB_FUNCTION,
            keys=sql.Identifier(INTERNAL, keys.KEYS_TABLE),
            state=sql.Identifier(INTERNAL, keys.STATE_TABLE),
            events=events,
            guc=sql.SQL(_SCRUBBING),
            erasure=sql.SQL(ERASURE),
            skeleton=_SKELETON_FUNCTION,
        ),
        sql.SQL(
            "REVOKE ALL ON FUNCTION {}(text, text, text[], bigint[], bytea[]) FROM PUBLIC"
        ).format(_SCRUB_FUNCTION),
    ]
    for statement in statements:
        conn.execute(statement)


def _require_events_table(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT to_regclass(%s)", (f"{INTERNAL}.{EVENTS_TABLE}",)).fetchone()
    if row is None or row[0] is None:
        raise Unusable(
            f"database {conn.info.dbname} has no rollcall event store, and role "
            f"{conn.info.user} may not create one: run `rollcall db setup` as a superuser"
        )


class Erased(msgspec.Struct, frozen=True, kw_only=True):
    """The receipt of an erasure: whose data key was destroyed, when, by whom, and where the
    erasure is recorded in the store."""

    status: str = "erased"
    event: str
    attendee_id: str
    erased_at: datetime
    erased_by: str
    position: int
    receipt: str
    plaintext_rewritten: int = 0  # deliveries stored before encryption, rewritten as skeletons


def _erasure_body(slug: str, attendee_id: str, by: str, at: datetime) -> bytes:
    """The erasure's own record: who and when, no personal data."""
    return msgspec.json.encode(
        {
            "event": "AttendeeErased",
            "slug": slug,
            "attendee": {"id": attendee_id},
            "by": by,
            "at": at.isoformat(),
        }
    )


def _skeleton_of(state: stored_form.DeliveryState) -> bytes:
    """A stored delivery's skeleton: from today's reading of its body where that reads as the
    same event it was stored as, else from what intake stored beside it."""
    assert state.attendee_id is not None
    reading = interpret(state.body)
    if isinstance(reading, Interpreted) and (reading.event_type, reading.attendee_id) == (
        state.event_type,
        state.attendee_id,
    ):
        return skeleton(reading)
    return bare_skeleton(state.event_type, state.attendee_id, state.delivery_id, state.occurred_at)


def _sqlstate(error: BaseException) -> str | None:
    cause = error.__cause__
    return getattr(cause, "sqlstate", None) if cause is not None else None


class _Sealer:
    """Seals deliveries for the store: the body under its attendee's data key, beside its
    skeleton. Data keys are cached per writer; new ones join the cache once committed."""

    def __init__(self, keyring: keys.Keyring) -> None:
        self._keyring = keyring
        self._lock = threading.Lock()
        self._epoch: int | None = None  # None: read it again
        self._cutover = 0
        self._keys: dict[keys.Subject, AESGCM | None] = {}  # None: erased
        # Keys made by a batch not yet committed: another writer's batch uses (and inserts)
        # the same one rather than racing with a key of its own.
        self._pending: dict[keys.Subject, tuple[AESGCM, bytes]] = {}
        self._emails: set[tuple[str, str, str]] = set()  # (email, slug, attendee) recorded
        # A registration's attendee is taken to be new without asking the database for their
        # key (add_data_keys refuses a second key, KEY_RACE); those guessed in a batch not yet
        # committed, and those guessed wrong, which are looked up from then on.
        self._guessed: set[keys.Subject] = set()
        self._look_up: set[keys.Subject] = set()

    def forget(self) -> None:
        with self._lock:
            self._epoch = None
            self._keys.clear()
            self._pending.clear()

    def lost_race(self) -> None:
        """Keys this process made lost to another process's (or a guess that an attendee was
        new was wrong): read those again."""
        with self._lock:
            self._pending.clear()
            if len(self._look_up) > _LOOK_UP_MAX:
                self._look_up.clear()
            self._look_up |= self._guessed
            self._guessed.clear()

    def cutover(self, recorder: IntakeRecorder) -> int:
        """Up to which position deliveries were stored before encryption (0: none)."""
        if self._epoch is None:
            self._load(recorder)
        return self._cutover

    def _load(self, recorder: IntakeRecorder) -> None:
        with recorder.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            epoch, cutover = keys.state(cur)
        with self._lock:
            self._keys.clear()
            self._epoch, self._cutover = epoch, cutover

    def seal(
        self, recorder: IntakeRecorder, pending: Sequence[DeliveryRecorded]
    ) -> tuple[list[DeliveryRecorded], tuple[sql.Composed, tuple[Any, ...]], Any]:
        """The deliveries as stored, the data-key check (with the keys they add), and what to
        call once they are committed."""
        if self._epoch is None:
            self._load(recorder)
        epoch = self._epoch
        assert epoch is not None
        subjects = [
            keys.subject_of(d.slug, d.attendee_id, d.originator_id)
            if d.verified_by != ERASURE
            else None
            for d in pending
        ]
        with self._lock:
            # This batch's hits, copied: another writer's forget() empties the cache while this
            # batch is sealed, and a key seen here must still be found below. The batch commits
            # only in this epoch.
            cached = {s: self._keys[s] for s in subjects if s in self._keys}
            shared = {s: self._pending[s] for s in subjects if s in self._pending}
            look_up = self._look_up
        missing = {s for s in subjects if s is not None and s not in cached and s not in shared}
        guessed = {
            s
            for d, s in zip(pending, subjects, strict=True)
            if s in missing and d.event_type == "AttendeeRegistered" and s not in look_up
        }
        missing -= guessed
        found: dict[keys.Subject, bytes | None] = {}
        blocked: set[keys.Subject] = set()
        if missing:
            with (
                recorder.datastore.get_connection() as conn,
                conn.cursor(row_factory=tuple_row) as cur,
            ):
                found = keys.wrapped_keys(cur, missing)
                # A new quarantined delivery (rare) naming an erased attendee keeps nothing
                # of its content, as theirs do (an erasure meanwhile moves the epoch on).
                for delivery, subject in zip(pending, subjects, strict=True):
                    if (
                        subject in missing
                        and subject not in found
                        and subject[1] == keys.DELIVERY
                        and keys.names_erased(cur, self._keyring, delivery.slug, delivery.body)
                    ):
                        blocked.add(subject)
        known: dict[keys.Subject, AESGCM | None] = {}
        new: dict[keys.Subject, tuple[AESGCM, bytes]] = dict(shared)
        made: dict[keys.Subject, tuple[AESGCM, bytes]] = {}
        for wanted in missing:
            if wanted in blocked:
                known[wanted] = None
            elif wanted in found:
                wrapped = found[wanted]
                known[wanted] = (
                    self._keyring.unwrap(wanted, wrapped) if wrapped is not None else None
                )
            else:
                made[wanted] = self._keyring.new_key(wanted)
        for wanted in guessed:
            made[wanted] = self._keyring.new_key(wanted)
        if made:
            with self._lock:
                self._guessed |= guessed
                for wanted, key in made.items():
                    # Another writer may have made one meanwhile: use that one.
                    new[wanted] = self._pending.setdefault(wanted, key)
        emails: dict[tuple[str, str, str], None] = {}
        out = []
        for delivery, subject in zip(pending, subjects, strict=True):
            if subject is None or delivery.sealed is not None:
                out.append(delivery)
                continue
            aead = _data_key(subject, cached, known, new)
            if delivery.quarantine_reason is not None:
                readable = None
            elif READING in delivery.__dict__:
                readable = delivery.__dict__[READING]
            else:
                reading = interpret(delivery.body)
                readable = reading if isinstance(reading, Interpreted) else None
            clear = skeleton(readable) if readable is not None else quarantine_skeleton()
            if aead is None:
                # The attendee was erased: their personal content is not kept (DESIGN.md,
                # "Personal data"), only the skeleton the views need.
                out.append(_changed(delivery, body=clear))
                continue
            sealed = keys.seal(aead, delivery.body, delivery.originator_id)
            out.append(_changed(delivery, body=clear, sealed=sealed))
            email = readable.attendee.get("email") if readable is not None else None
            if isinstance(email, str) and email.strip() and delivery.attendee_id is not None:
                seen = (email, delivery.slug, delivery.attendee_id)
                if seen not in self._emails:
                    emails[seen] = None
        crypto = keys.add_keys_call(
            epoch,
            [(s, w) for s, (_, w) in new.items()],
            [(self._keyring.email_hmac(e), slug, a) for e, slug, a in emails],
        )

        def commit() -> None:
            with self._lock:
                if self._epoch == epoch:
                    if len(self._keys) + len(known) + len(new) > _KEYS_MAX:
                        self._keys.clear()
                    self._keys.update(known)
                    self._keys.update({s: aead for s, (aead, _) in new.items()})
                for subject in new:
                    self._pending.pop(subject, None)
                self._guessed -= guessed
                if len(self._emails) > _EMAILS_SEEN_MAX:
                    self._emails.clear()
                self._emails.update(emails)

        return out, crypto, commit


def _data_key(
    subject: keys.Subject,
    cached: Mapping[keys.Subject, AESGCM | None],
    known: Mapping[keys.Subject, AESGCM | None],
    new: Mapping[keys.Subject, tuple[AESGCM, bytes]],
) -> AESGCM | None:
    """The key a delivery is sealed with; None only for an attendee known to be erased. A
    subject no step decided on is a bug, and fails the batch (503, retried) rather than
    storing a skeleton that would lose the delivery's content."""
    aead = cached[subject] if subject in cached else known.get(subject)
    if aead is None and subject in new:
        return new[subject][0]
    if aead is None and subject not in cached and subject not in known:
        raise RuntimeError("no data key was decided for a delivery of this batch")
    return aead


def opened(
    cur: psycopg.Cursor[Any],
    keyring: keys.Keyring,
    stored: list[StoredDelivery[Any]],
    cache: keys.KeyCache | None = None,
) -> list[StoredDelivery[Any]]:
    """Stored deliveries with their sealed bodies decrypted where their data key still exists;
    an erased one keeps its skeleton (and `sealed` set: its body is gone for good). A reader
    of many batches passes its `cache` of data keys (see keys.KeyCache)."""
    subjects = _subjects(stored)
    if not subjects:
        return stored
    if cache is not None:
        return _opened_with(stored, subjects, cache.aeads(cur, keyring, set(subjects.values())))
    wrapped = keys.wrapped_keys(cur, set(subjects.values()))
    return _opened_with(stored, subjects, _unwrapped(keyring, wrapped))


async def opened_async(
    conn: asyncpg.Connection | asyncpg.Pool, stored: list[StoredDelivery[Any]]
) -> list[StoredDelivery[Any]]:
    """`opened` for the API's asyncpg connections, with this process's keyring."""
    subjects = _subjects(stored)
    if not subjects:
        return stored
    wanted = list(set(subjects.values()))
    rows = await conn.fetch(
        f"SELECT k.slug, k.kind, k.subject, k.wrapped FROM {INTERNAL}.{keys.KEYS_TABLE} k "
        "JOIN unnest($1::text[], $2::text[], $3::text[]) AS w(slug, kind, subject) "
        "USING (slug, kind, subject)",
        [w[0] for w in wanted],
        [w[1] for w in wanted],
        [w[2] for w in wanted],
    )
    wrapped = {(r[0], r[1], r[2]): (bytes(r[3]) if r[3] is not None else None) for r in rows}
    return _opened_with(stored, subjects, _unwrapped(keys.active(), wrapped))


def _unwrapped(
    keyring: keys.Keyring, wrapped: dict[keys.Subject, bytes | None]
) -> dict[keys.Subject, AESGCM | None]:
    return {s: keyring.unwrap(s, w) if w is not None else None for s, w in wrapped.items()}


def _subjects(stored: list[StoredDelivery[Any]]) -> dict[UUID, keys.Subject]:
    out = {}
    for item in stored:
        state = item.state
        if state.sealed is not None:
            attendee = state.attendee_id
            out[item.key] = (
                (state.slug, keys.ATTENDEE, attendee)
                if attendee is not None
                else (state.slug, keys.DELIVERY, str(item.key))
            )
    return out


def _opened_with(
    stored: list[StoredDelivery[Any]],
    subjects: dict[UUID, keys.Subject],
    aeads: dict[keys.Subject, AESGCM | None],
) -> list[StoredDelivery[Any]]:
    out = []
    unseal = keys.unseal
    replace = msgspec.structs.replace
    for item in stored:
        sealed = item.state.sealed
        aead = aeads.get(subjects[item.key]) if sealed is not None else None
        body = unseal(aead, sealed, item.key) if aead is not None else None
        if body is None:
            out.append(item)
        else:
            state = replace(item.state, body=body, sealed=None)
            out.append(StoredDelivery(item.position, item.key, state))
    return out
