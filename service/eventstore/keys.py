"""Crypto-shredding: a data key per attendee, wrapped by a master key kept outside the database.

Each (JTE event, attendee id) gets a random 256-bit data key; every delivery about them is
stored encrypted under it (AES-256-GCM) and the key itself is stored wrapped (AES-256-GCM) by
the master key, which lives in the data directory (`master.key`, mode 0600, generated on first
start) or is given as ROLLCALL_MASTER_KEY. A dump or backup of the database alone therefore
holds no readable personal data, and erasing a person is destroying one wrapped key.

A quarantined delivery (no attendee to file it under) gets a data key of its own (kind `d`).

Table `rollcall.data_keys` holds the wrapped keys (NULL once erased) and, per attendee, keyed
HMACs of their email addresses (never the address) for subject requests; `crypto_state` holds
the master key's fingerprint (a wrong key is refused, not used) and an epoch that every erasure
advances: intake's insert checks it under the table lock, so a writer holding a key cached
before an erasure never stores new personal data under it (service/eventstore/store.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import sql

from projections.schema import INTERNAL
from service.eventstore.database import Unusable

MASTER_KEY_FILE: Final = "master.key"
MASTER_KEY_ENV: Final = "ROLLCALL_MASTER_KEY"
KEYS_TABLE: Final = "data_keys"
EMAILS_TABLE: Final = "subject_emails"
ERASED_EMAILS_TABLE: Final = "erased_emails"
STATE_TABLE: Final = "crypto_state"
ADD_KEYS_FUNCTION: Final = "add_data_keys"
ERASE_FUNCTION: Final = "erase_data_key"
INIT_FUNCTION: Final = "init_crypto_state"
LIFT_FUNCTION: Final = "lift_erasure"
# The SQLSTATEs add_data_keys raises when the keys a writer holds are stale (an erasure since:
# forget them all) or a key it made was made meanwhile by another writer (read it, retry).
STALE_KEYS: Final = "RC001"
KEY_RACE: Final = "RC002"
ATTENDEE: Final = "a"  # kinds of data key
DELIVERY: Final = "d"
_NONCE: Final = 12
# Unwrapped data keys kept per process: each (an AESGCM, its OpenSSL context prepared) holds
# ~2.5 kB, so 200,000 could hold 500 MB in every rebuild worker of a large store; unwrapping
# again after the cache is cleared costs a few microseconds a person.
_CACHE_MAX: Final = 10_000

Subject = tuple[str, str, str]  # (slug, kind, subject)


class MasterKeyMissing(Unusable):
    """Encrypted personal data exists but this process has not got its master key."""


def subject_of(slug: str, attendee_id: str | None, key: Any) -> Subject:
    """Whose data key seals a delivery: its attendee's, or (quarantined) its own."""
    if attendee_id is not None:
        return (slug, ATTENDEE, attendee_id)
    return (slug, DELIVERY, str(key))


def normalised_email(email: str) -> str:
    """The form an email is matched in: trimmed and lower case."""
    return email.strip().lower()


class Keyring:
    """The master key and what derives from it: wrapping, dedupe and subject-lookup secrets,
    and a cache of unwrapped data keys (by their wrapped bytes, so it serves any database)."""

    def __init__(self, master: bytes, *, path: Path | None = None, persisted: bool = True) -> None:
        if len(master) != 32:
            raise ValueError("a master key is 32 bytes")
        self._master = master
        self._wrap = AESGCM(self._derive(b"wrap"))
        self.dedupe_secret: Final = self._derive(b"dedupe")
        self._email_secret = self._derive(b"subject-email")
        self.fingerprint: Final = self._derive(b"fingerprint")[:16]
        self.path = path  # where it is kept (None: given by the operator)
        self._persisted = persisted
        self._aeads: dict[bytes, AESGCM] = {}
        self._lock = threading.Lock()

    def _derive(self, label: bytes) -> bytes:
        return hmac.new(self._master, b"rollcall/" + label, hashlib.sha256).digest()

    def persist(self) -> None:
        """Write a generated master key to its file (mode 0600), once, before first use."""
        if self._persisted or self.path is None:
            return
        with self._lock:
            if not self._persisted:
                _write_new(self.path, self._master)
                self._persisted = True

    def new_key(self, subject: Subject) -> tuple[AESGCM, bytes]:
        """A fresh data key for `subject`, and its wrapped form."""
        data_key = secrets.token_bytes(32)
        nonce = secrets.token_bytes(_NONCE)
        wrapped = nonce + self._wrap.encrypt(nonce, data_key, _aad(subject))
        aead = AESGCM(data_key)
        self._remember(wrapped, aead)
        return aead, wrapped

    def unwrap(self, subject: Subject, wrapped: bytes) -> AESGCM:
        """The data key of `subject` from its wrapped form (cached)."""
        aead = self._aeads.get(wrapped)
        if aead is None:
            try:
                data_key = self._wrap.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _aad(subject))
            except InvalidTag:
                raise Unusable(
                    "a data key does not open with this master key: is it the one this "
                    "database was written with?"
                ) from None
            aead = AESGCM(data_key)
            self._remember(wrapped, aead)
        return aead

    def _remember(self, wrapped: bytes, aead: AESGCM) -> None:
        if len(self._aeads) >= _CACHE_MAX:
            self._aeads.clear()  # rare; unwrapping again is cheap
        self._aeads[wrapped] = aead

    def email_hmac(self, email: str) -> bytes:
        """The keyed hash subject requests find a person by; never the address itself."""
        return hmac.new(
            self._email_secret, normalised_email(email).encode(), hashlib.sha256
        ).digest()


def seal(aead: AESGCM, body: bytes, key: Any) -> bytes:
    """A body encrypted under a data key, bound to its delivery key."""
    nonce = os.urandom(_NONCE)
    return nonce + aead.encrypt(nonce, body, key.bytes)


def unseal(aead: AESGCM, sealed: bytes, key: Any) -> bytes | None:
    """The body `seal` encrypted; None if it was sealed under another key of the subject (one
    destroyed by an erasure whose block was lifted since): that body is gone for good."""
    try:
        return aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], key.bytes)
    except InvalidTag:
        return None


def _aad(subject: Subject) -> bytes:
    return "\x00".join(subject).encode()


# --- The master key --------------------------------------------------------------------------

_ACTIVE: Keyring | None = None
_ACTIVE_LOCK: Final = threading.Lock()


def keyring_for(data_dir: Path, given: str | None = None) -> Keyring:
    """The master key given (setting or ROLLCALL_MASTER_KEY), else the data directory's; a new
    one (written on first use, see Keyring.persist) when there is none yet."""
    given = given or os.environ.get(MASTER_KEY_ENV)
    if given:
        return Keyring(_parse(given, MASTER_KEY_ENV))
    path = data_dir / MASTER_KEY_FILE
    if path.exists():
        return Keyring(_parse(path.read_text(), str(path)), path=path)
    return Keyring(secrets.token_bytes(32), path=path, persisted=False)


def activate(keyring: Keyring) -> Keyring:
    """Make `keyring` the one this process seals and opens with."""
    global _ACTIVE
    with _ACTIVE_LOCK:
        _ACTIVE = keyring
    return keyring


def active() -> Keyring:
    """This process's keyring: the activated one, else the one the settings name."""
    if _ACTIVE is not None:
        return _ACTIVE
    from service.config import load_settings  # the service's own settings, read lazily

    settings = load_settings()
    with _ACTIVE_LOCK:
        if _ACTIVE is None:
            globals()["_ACTIVE"] = keyring_for(settings.data_dir, settings.master_key)
        assert _ACTIVE is not None
        return _ACTIVE


def _parse(text: str, where: str) -> bytes:
    text = text.strip()
    try:
        raw = bytes.fromhex(text) if len(text) == 64 else base64.urlsafe_b64decode(text + "==")
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 32:
        raise Unusable(f"the master key in {where} is not 32 bytes of hex or base64")
    return raw


def _write_new(path: Path, master: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: of two processes starting at once, exactly one writes it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.urlsafe_b64encode(master).decode() + "\n")


def generate_master_key() -> str:
    """A new master key as ROLLCALL_MASTER_KEY takes it."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


# --- The tables ------------------------------------------------------------------------------

_KEYS: Final = sql.Identifier(INTERNAL, KEYS_TABLE)
_EMAILS: Final = sql.Identifier(INTERNAL, EMAILS_TABLE)
_ERASED_EMAILS: Final = sql.Identifier(INTERNAL, ERASED_EMAILS_TABLE)
_STATE: Final = sql.Identifier(INTERNAL, STATE_TABLE)
_ADD: Final = sql.Identifier(INTERNAL, ADD_KEYS_FUNCTION)
_ERASE: Final = sql.Identifier(INTERNAL, ERASE_FUNCTION)
_INIT: Final = sql.Identifier(INTERNAL, INIT_FUNCTION)
_LIFT: Final = sql.Identifier(INTERNAL, LIFT_FUNCTION)


def create_tables(conn: psycopg.Connection[Any], events_table: sql.Composable) -> None:
    """The key tables and their functions (by a session that migrates the schema)."""
    statements = [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (slug text NOT NULL, kind text NOT NULL, "
            "subject text NOT NULL, wrapped bytea, created_at timestamptz NOT NULL DEFAULT now(), "
            "erased_at timestamptz, erased_by text, PRIMARY KEY (slug, kind, subject))"
        ).format(_KEYS),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (email_hmac bytea NOT NULL, slug text NOT NULL, "
            "attendee_id text NOT NULL, PRIMARY KEY (email_hmac, slug, attendee_id))"
        ).format(_EMAILS),
        # An erased attendee's email hashes, kept (keyed, never the address) so that intake
        # can tell a quarantined delivery naming them: its content is not kept either.
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (slug text NOT NULL, email_hmac bytea NOT NULL, "
            "attendee_id text NOT NULL, PRIMARY KEY (slug, email_hmac, attendee_id))"
        ).format(_ERASED_EMAILS),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (id int PRIMARY KEY CHECK (id = 1), "
            "fingerprint bytea NOT NULL, epoch bigint NOT NULL DEFAULT 0, "
            "cutover bigint NOT NULL)"
        ).format(_STATE),
        # Runs with its owner's rights, under intake's table lock: checks the writer's keys are
        # not stale (no erasure since it read them) and adds the new ones, all or none.
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {add}(expected bigint, slugs text[], kinds text[], "
            "subjects text[], wrapped bytea[], e_hmacs bytea[], e_slugs text[], e_ids text[]) "
            "RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$ "
            "DECLARE n bigint; BEGIN "
            "IF (SELECT epoch FROM {state} WHERE id = 1) IS DISTINCT FROM expected THEN "
            "RAISE EXCEPTION 'rollcall: data keys changed (an erasure)' USING ERRCODE = '{stale}'; "
            "END IF; "
            "IF cardinality(slugs) > 0 THEN "
            "INSERT INTO {keys} (slug, kind, subject, wrapped) "
            "SELECT * FROM unnest(slugs, kinds, subjects, wrapped) ON CONFLICT DO NOTHING; "
            "GET DIAGNOSTICS n = ROW_COUNT; "
            # Already there is fine if it is the same key (two batches of one writer process
            # share a key made but not yet committed); another key for it is a race.
            "IF n <> cardinality(slugs) AND EXISTS (SELECT 1 FROM unnest(slugs, kinds, "
            "subjects, wrapped) AS u(slug, kind, subject, wrapped) JOIN {keys} k USING "
            "(slug, kind, subject) WHERE k.wrapped IS DISTINCT FROM u.wrapped) THEN "
            "RAISE EXCEPTION 'rollcall: a data key was made elsewhere' USING ERRCODE = '{race}'; "
            "END IF; END IF; "
            "IF cardinality(e_hmacs) > 0 THEN "
            "INSERT INTO {emails} SELECT * FROM unnest(e_hmacs, e_slugs, e_ids) "
            "ON CONFLICT DO NOTHING; END IF; "
            "RETURN true; END $$"
        ).format(
            add=_ADD,
            state=_STATE,
            keys=_KEYS,
            emails=_EMAILS,
            stale=sql.SQL(STALE_KEYS),
            race=sql.SQL(KEY_RACE),
        ),
        sql.SQL(
            "REVOKE ALL ON FUNCTION {}(bigint, text[], text[], text[], bytea[], bytea[], "
            "text[], text[]) FROM PUBLIC"
        ).format(_ADD),
        # Erasure: the wrapped key goes (kept as a tombstone that blocks a new key), the email
        # hashes go, and the epoch moves on so every writer drops its cached key.
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {erase}(p_slug text, p_id text, p_by text, "
            "p_deliveries text[]) "
            "RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$ "
            "DECLARE existed boolean; BEGIN "
            "UPDATE {keys} SET wrapped = NULL, erased_at = now(), erased_by = p_by "
            "WHERE slug = p_slug AND kind = 'd' AND subject = ANY(p_deliveries); "
            "UPDATE {state} SET epoch = epoch + 1 WHERE id = 1; "
            "SELECT wrapped IS NOT NULL INTO existed FROM {keys} "
            "WHERE slug = p_slug AND kind = 'a' AND subject = p_id; "
            "INSERT INTO {keys} (slug, kind, subject, wrapped, erased_at, erased_by) "
            "VALUES (p_slug, 'a', p_id, NULL, now(), p_by) ON CONFLICT (slug, kind, subject) "
            "DO UPDATE SET wrapped = NULL, erased_at = now(), erased_by = p_by; "
            "INSERT INTO {erased} SELECT slug, email_hmac, attendee_id FROM {emails} "
            "WHERE slug = p_slug AND attendee_id = p_id ON CONFLICT DO NOTHING; "
            "DELETE FROM {emails} WHERE slug = p_slug AND attendee_id = p_id; "
            "RETURN coalesce(existed, false); END $$"
        ).format(erase=_ERASE, state=_STATE, keys=_KEYS, emails=_EMAILS, erased=_ERASED_EMAILS),
        sql.SQL("REVOKE ALL ON FUNCTION {}(text, text, text, text[]) FROM PUBLIC").format(_ERASE),
        # The first store opened with a master key records its fingerprint, and up to where
        # deliveries were stored before encryption (the runtime role, through this function).
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {init}(p_fingerprint bytea) RETURNS void "
            "LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$ "
            "INSERT INTO {state} (id, fingerprint, cutover) "
            "SELECT 1, p_fingerprint, coalesce(max(notification_id), 0) FROM {events} "
            "ON CONFLICT DO NOTHING $$"
        ).format(init=_INIT, state=_STATE, events=events_table),
        sql.SQL("REVOKE ALL ON FUNCTION {}(bytea) FROM PUBLIC").format(_INIT),
        # The organiser lifts the block an erasure leaves: the tombstone goes, so the next
        # delivery about the attendee gets a new key (what was erased stays erased).
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {lift}(p_slug text, p_id text) RETURNS boolean "
            "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$ "
            "DECLARE n bigint; BEGIN "
            "DELETE FROM {keys} WHERE slug = p_slug AND kind = 'a' AND subject = p_id "
            "AND wrapped IS NULL; GET DIAGNOSTICS n = ROW_COUNT; "
            "DELETE FROM {erased} WHERE slug = p_slug AND attendee_id = p_id; "
            "UPDATE {state} SET epoch = epoch + 1 WHERE id = 1; "
            "RETURN n > 0; END $$"
        ).format(lift=_LIFT, keys=_KEYS, state=_STATE, erased=_ERASED_EMAILS),
        sql.SQL("REVOKE ALL ON FUNCTION {}(text, text) FROM PUBLIC").format(_LIFT),
    ]
    for statement in statements:
        conn.execute(statement)


def check_master_key(conn: psycopg.Connection[Any], keyring: Keyring) -> None:
    """Refuse a master key that is not this database's; on a database without one yet, record
    this key (persisting a generated one first). Deliveries stored before encryption existed
    (up to `cutover`) stay readable as they are."""
    row = conn.execute(sql.SQL("SELECT fingerprint FROM {} WHERE id = 1").format(_STATE)).fetchone()
    if row is not None:
        if bytes(row[0]) != keyring.fingerprint:
            where = keyring.path if keyring.path is not None else MASTER_KEY_ENV
            missing = keyring.path is not None and not keyring.path.exists()
            raise MasterKeyMissing(
                f"this database's personal data is encrypted under a master key that is "
                f"{'not in ' if missing else 'not the one in '}{where}: restore the original "
                f"(the data directory's {MASTER_KEY_FILE}, or {MASTER_KEY_ENV}); nothing was "
                "changed"
            )
        return
    keyring.persist()
    conn.execute(sql.SQL("SELECT {}(%s)").format(_INIT), (keyring.fingerprint,))
    row = conn.execute(sql.SQL("SELECT fingerprint FROM {} WHERE id = 1").format(_STATE)).fetchone()
    if row is not None and bytes(row[0]) != keyring.fingerprint:
        raise MasterKeyMissing(
            "another process recorded a different master key for this database at the same "
            "moment: give every process the same one (ROLLCALL_MASTER_KEY)"
        )


def state(cur: psycopg.Cursor[Any]) -> tuple[int, int]:
    """The erasure epoch and the cutover position (0, 0 where not set up)."""
    row = cur.execute(
        sql.SQL("SELECT epoch, cutover FROM {} WHERE id = 1").format(_STATE)
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def wrapped_keys(
    cur: psycopg.Cursor[Any], subjects: Iterable[Subject]
) -> dict[Subject, bytes | None]:
    """The stored wrapped keys of these subjects: None for an erased one, absent if none."""
    wanted = list(subjects)
    if not wanted:
        return {}
    rows = cur.execute(
        sql.SQL(
            "SELECT k.slug, k.kind, k.subject, k.wrapped FROM {} k JOIN "
            "unnest(%b::text[], %b::text[], %b::text[]) AS w(slug, kind, subject) "
            "USING (slug, kind, subject)"
        ).format(_KEYS),
        ([s[0] for s in wanted], [s[1] for s in wanted], [s[2] for s in wanted]),
    ).fetchall()
    return {(r[0], r[1], r[2]): (bytes(r[3]) if r[3] is not None else None) for r in rows}


class KeyCache:
    """The data keys one reader of many batches (the projections' source) has opened, kept
    while the erasure epoch stays: a key is only ever added, except by an erasure or a lift,
    which move the epoch on. Each batch then costs one query, for the epoch and the subjects
    not seen before."""

    def __init__(self) -> None:
        # Per database (one process may read several: tests, a server's databases): its
        # epoch, and the keys opened in it (None: erased).
        self._epochs: dict[tuple[str, int, str], int] = {}
        self._caches: dict[tuple[str, int, str], dict[Subject, AESGCM | None]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {}  # another process (a bulk rebuild's worker) starts with an empty cache

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def aeads(
        self, cur: psycopg.Cursor[Any], keyring: Keyring, subjects: set[Subject]
    ) -> dict[Subject, AESGCM | None]:
        """The opened data keys of these subjects (None: erased; absent: none stored)."""
        info = cur.connection.info
        database = (info.host, info.port, info.dbname)
        with self._lock:
            # The hits copied now: the cache may be emptied below (when full) or by another
            # thread, and a key found here must stay found.
            epoch, hits = self._epochs.get(database), self._caches.get(database, {})
            known = {s: hits[s] for s in subjects if s in hits}
        missing = [s for s in subjects if s not in known]
        now, found = _epoch_and_keys(cur, missing)
        if now != epoch and epoch is not None:
            # An erasure or a lift since: nothing cached can be trusted.
            known = {}
            now, found = _epoch_and_keys(cur, list(subjects))
        opened = {s: keyring.unwrap(s, w) if w is not None else None for s, w in found.items()}
        with self._lock:
            cache = self._caches.get(database)
            if cache is None or self._epochs.get(database) != now:
                cache = self._caches[database] = {}
                self._epochs[database] = now
            if len(cache) + len(opened) > _CACHE_MAX:
                cache.clear()
            cache.update(opened)
        return {
            s: opened[s] if s in opened else known[s] for s in subjects if s in opened or s in known
        }


def _epoch_and_keys(
    cur: psycopg.Cursor[Any], subjects: Sequence[Subject]
) -> tuple[int, dict[Subject, bytes | None]]:
    """The erasure epoch and the stored wrapped keys of these subjects, in one query."""
    rows = cur.execute(
        sql.SQL(
            "SELECT s.epoch, k.slug, k.kind, k.subject, k.wrapped FROM {} s LEFT JOIN "
            "({} k JOIN unnest(%b::text[], %b::text[], %b::text[]) AS w(slug, kind, subject) "
            "USING (slug, kind, subject)) ON true WHERE s.id = 1"
        ).format(_STATE, _KEYS),
        ([s[0] for s in subjects], [s[1] for s in subjects], [s[2] for s in subjects]),
    ).fetchall()
    if not rows:
        return -1, {}
    return int(rows[0][0]), {
        (r[1], r[2], r[3]): (bytes(r[4]) if r[4] is not None else None)
        for r in rows
        if r[1] is not None
    }


def add_keys_call(
    epoch: int,
    new: Sequence[tuple[Subject, bytes]],
    emails: Sequence[tuple[bytes, str, str]],
) -> tuple[sql.Composed, tuple[Any, ...]]:
    """The call that checks `epoch` and adds `new` keys and email hashes, and its arguments."""
    call = sql.SQL(
        "SELECT {}(%s, %b::text[], %b::text[], %b::text[], %b::bytea[], %b::bytea[], "
        "%b::text[], %b::text[]) AS ok"
    ).format(_ADD)
    args = (
        epoch,
        [s[0] for s, _ in new],
        [s[1] for s, _ in new],
        [s[2] for s, _ in new],
        [w for _, w in new],
        [e[0] for e in emails],
        [e[1] for e in emails],
        [e[2] for e in emails],
    )
    return call, args


def erase_call() -> sql.Composed:
    """The call that destroys an attendee's data key: (slug, attendee id, by whom, and the
    delivery keys of quarantined deliveries about them)."""
    return sql.SQL("SELECT {}(%s, %s, %s, %s::text[])").format(_ERASE)


def lift(conn: psycopg.Connection[Any], slug: str, attendee_id: str) -> bool:
    """Lift an erasure's block on an attendee (True if there was one)."""
    row = conn.execute(sql.SQL("SELECT {}(%s, %s)").format(_LIFT), (slug, attendee_id)).fetchone()
    return bool(row and row[0])


# Linear on hostile bodies: a match starts only where a run of address characters starts, and
# runs are taken whole (possessive), so 1 MB of letters is read once, not once per position
# (the plain pattern backtracked quadratically and held a writer for minutes).
_EMAIL: Final = re.compile(rb"(?<![\w.+-])[\w.+-]++@[\w-]++(?:\.[\w-]++)+")


def emails_in(body: bytes) -> set[str]:
    """The email addresses a body holds anywhere (a quarantined one has no reading)."""
    return {m.decode("utf-8", "replace") for m in _EMAIL.findall(body)}


def email_hmacs_of(cur: psycopg.Cursor[Any], slug: str, attendee_id: str) -> set[bytes]:
    """The keyed hashes of every email address an attendee's deliveries carried."""
    rows = cur.execute(
        sql.SQL("SELECT email_hmac FROM {} WHERE slug = %s AND attendee_id = %s").format(_EMAILS),
        (slug, attendee_id),
    ).fetchall()
    return {bytes(r[0]) for r in rows}


def names_erased(cur: psycopg.Cursor[Any], keyring: Keyring, slug: str, body: bytes) -> bool:
    """Whether a quarantined body names an attendee of this event whose data was erased (by
    their id, or an email address of theirs): the rule an erasure applies to the quarantined
    deliveries stored before it, applied to those arriving after."""
    emails = emails_in(body)
    row = cur.execute(
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {keys} WHERE slug = %s AND kind = 'a' "
            "AND wrapped IS NULL AND strpos(%s, subject) > 0) "
            "OR EXISTS (SELECT 1 FROM {erased} WHERE slug = %s AND email_hmac = ANY(%s))"
        ).format(keys=_KEYS, erased=_ERASED_EMAILS),
        (
            slug,
            body.decode("utf-8", "replace").replace("\x00", ""),
            slug,
            [keyring.email_hmac(e) for e in emails],
        ),
    ).fetchone()
    return bool(row and row[0])


def find_by_email(cur: psycopg.Cursor[Any], keyring: Keyring, email: str) -> list[tuple[str, str]]:
    """The (event, attendee id) pairs whose deliveries carried this email, by its keyed hash."""
    rows = cur.execute(
        sql.SQL("SELECT slug, attendee_id FROM {} WHERE email_hmac = %s ORDER BY 1, 2").format(
            _EMAILS
        ),
        (keyring.email_hmac(email),),
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]
