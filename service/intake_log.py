"""The intake log: what intake answered without storing a delivery (a refusal, 4xx, or a
duplicate), as metadata only, in a ring of rows that cannot grow without limit.

Each entry keeps the time, path, status, a snake_case reason, the body's size, the NAMES of the
headers that came (never their values), the shape of the unusual ones' values (`hex:64`,
`sha256=hex:64`, `base64:44`, `digits:10`: an alphabet and a length, never a character of
them, so `rollcall doctor` can say what JTE seems to send), and the peer address.

Intake only appends to a bounded buffer in memory (entries beyond it are dropped and counted);
each second the buffer is written in one statement into `rollcall.intake_log`, whose row for
refusal `id` is slot `id % LOG_ROWS` (a duplicate's, one of DUPLICATE_ROWS more): the newest
entries of every worker and replica, whatever an attacker sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import msgspec
import psycopg
from prometheus_client import Counter

from projections.schema import INTERNAL, may_migrate
from service.metrics import REGISTRY

log = logging.getLogger("rollcall.intake_log")

LOG_TABLE: Final = "intake_log"
LOG_SEQUENCE: Final = "intake_log_id_seq"
LOG_ROWS: Final = 10_000  # refusals kept, newest first (all workers and replicas together)
# Duplicates have slots of their own after those: a storm of JTE retries never pushes the
# refusals (what `rollcall doctor` reads) out of the log.
DUPLICATE_ROWS: Final = 5_000
_BUFFER: Final = 2_000  # entries a process holds between writes (at most LOG_ROWS / 2)
_FLUSH_SECONDS: Final = 1.0
_MAX_NAMES: Final = 40
_MAX_NAME: Final = 64
_MAX_PATH: Final = 200
_TABLE: Final = f"{INTERNAL}.{LOG_TABLE}"
_DDL: Final = (
    f"CREATE SEQUENCE IF NOT EXISTS {INTERNAL}.{LOG_SEQUENCE}",
    f"""CREATE TABLE IF NOT EXISTS {_TABLE} (
        slot integer PRIMARY KEY,
        id bigint NOT NULL,
        at timestamptz NOT NULL,
        outcome text NOT NULL,
        status smallint NOT NULL,
        reason text NOT NULL,
        event text NOT NULL,
        path text NOT NULL,
        body_size bigint,
        headers jsonb NOT NULL,
        peer text,
        delivery_key uuid)""",
    f"CREATE INDEX IF NOT EXISTS intake_log_id ON {_TABLE} (id)",
    # Owned by the table, the sequence goes wherever the table goes (`rollcall db setup`).
    f"ALTER SEQUENCE {INTERNAL}.{LOG_SEQUENCE} OWNED BY {_TABLE}.id",
)

UNLOGGED: Final = Counter(
    "rollcall_intake_log_dropped",
    "Intake log entries dropped because the buffer was full (a flood of refusals).",
    registry=REGISTRY,
)

# Headers every client sends: their values say nothing about a webhook scheme.
_ORDINARY: Final = frozenset(
    {
        "host", "user-agent", "content-type", "content-length", "accept", "accept-encoding",
        "accept-language", "connection", "x-forwarded-for", "x-forwarded-proto",
        "x-forwarded-host", "x-real-ip", "x-request-id", "traceparent", "tracestate", "via",
        "expect", "transfer-encoding", "cache-control", "pragma", "origin", "referer", "te",
    }
)  # fmt: skip
_HEX: Final = re.compile(rb"^[0-9a-fA-F]+$")
_DIGITS: Final = re.compile(rb"^[0-9]+$")
_BASE64: Final = re.compile(rb"^[A-Za-z0-9+/_-]+={0,2}$")
_PREFIX: Final = re.compile(rb"^([A-Za-z][A-Za-z0-9_-]{0,15})([=,])(.+)$")


class Headers(msgspec.Struct, frozen=True, kw_only=True):
    """The header names that came, and the shape of the unusual ones' values."""

    names: list[str]
    shapes: dict[str, str]


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One answer intake gave without storing a delivery."""

    id: int = 0  # given when written
    at: datetime
    outcome: str  # "rejected" or "duplicate"
    status: int
    reason: str
    event: str  # the configured slug the path named, else "other"
    path: str
    body_size: int | None
    headers: Headers
    peer: str | None
    delivery_key: str | None = None  # a duplicate's stored delivery


def shape(value: bytes) -> str:
    """A header value's alphabet and length, never its characters: `hex:64`, `base64:44`,
    `digits:10`, `text:12`, with a short scheme prefix kept (`sha256=hex:64`, `v1,base64:44`,
    `bearer base64:43`)."""
    value = value.strip()
    scheme, _, rest = value.partition(b" ")
    if rest and scheme.lower() in (b"bearer", b"basic", b"token"):
        return f"{scheme.lower().decode()} {shape(rest)}"
    if b" " in value:  # several entries: the first one's shape, and how many
        parts = value.split()
        return f"{shape(parts[0])} x{len(parts)}"
    prefixed = _PREFIX.match(value)
    if prefixed and not _BASE64.match(value):
        return f"{prefixed.group(1).decode()}{prefixed.group(2).decode()}{shape(prefixed.group(3))}"
    if prefixed and prefixed.group(2) == b"=" and _HEX.match(prefixed.group(3)):
        return f"{prefixed.group(1).decode()}={shape(prefixed.group(3))}"
    for name, pattern in (("digits", _DIGITS), ("hex", _HEX), ("base64", _BASE64)):
        if pattern.match(value):
            return f"{name}:{len(value)}"
    return f"text:{len(value)}"


def header_summary(headers: dict[str, bytes]) -> Headers:
    """Names (bounded in number and length) and the unusual headers' value shapes."""
    names = sorted(name[:_MAX_NAME] for name in headers)[:_MAX_NAMES]
    shapes = {
        name[:_MAX_NAME]: shape(value)
        for name, value in list(headers.items())[:_MAX_NAMES]
        if name not in _ORDINARY
    }
    return Headers(names=names, shapes=shapes)


class IntakeLog:
    """The process's buffer of entries, written to the database each second."""

    def __init__(self) -> None:
        self._buffer: deque[Entry] = deque()
        self._task: asyncio.Task[None] | None = None
        self._pool: asyncpg.Pool | None = None

    def record(
        self,
        *,
        outcome: str,
        status: int,
        reason: str,
        event: str,
        path: str,
        body_size: int | None,
        headers: dict[str, bytes],
        peer: str | None,
        delivery_key: str | None = None,
    ) -> None:
        """Keep one entry for the next write (dropped, and counted, if the buffer is full)."""
        if len(self._buffer) >= _BUFFER:
            UNLOGGED.inc()
            return
        self._buffer.append(
            Entry(
                at=datetime.now(UTC),
                outcome=outcome,
                status=status,
                reason=reason,
                event=event,
                path=path[:_MAX_PATH],
                body_size=body_size,
                headers=header_summary(headers),
                peer=peer,
                delivery_key=delivery_key,
            )
        )

    def start(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._task = asyncio.get_running_loop().create_task(self._flush_forever())
        _STARTED.append(self)

    async def stop(self) -> None:
        if self in _STARTED:
            _STARTED.remove(self)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        self._pool = None

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_SECONDS)
            await self.flush()

    async def flush(self) -> None:
        """Write what is buffered in one statement (kept for the next try if the database
        does not answer: the buffer's bound still holds)."""
        if not self._buffer or self._pool is None:
            return
        # Taken before the await: a flush running meanwhile writes none of them twice.
        entries = [self._buffer.popleft() for _ in range(len(self._buffer))]
        try:
            await self._pool.execute(_INSERT, *_columns(entries), LOG_ROWS, DUPLICATE_ROWS)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as error:
            log.warning("intake log not written now: %s", type(error).__name__)
            # Back in front of newer ones, for the next try; the bound still holds.
            room = _BUFFER - len(self._buffer)
            self._buffer.extendleft(reversed(entries[-room:] if room > 0 else []))
        except Exception:
            # Not the database's absence: these entries would fail again. Drop them, once.
            log.exception("intake log entries dropped: they could not be written")


_STARTED: list[IntakeLog] = []


def current() -> IntakeLog | None:
    """The log of the app this process serves (for refusals made below the app: a 431)."""
    return _STARTED[-1] if _STARTED else None


_INSERT: Final = f"""
INSERT INTO {_TABLE} AS t
    (slot, id, at, outcome, status, reason, event, path, body_size, headers, peer, delivery_key)
SELECT CASE WHEN outcome = 'duplicate' THEN $11 + n % $12 ELSE n % $11 END, n, at, outcome,
    status, reason, event, path, body_size, headers::jsonb, peer, delivery_key::uuid
FROM (
    SELECT nextval('{INTERNAL}.{LOG_SEQUENCE}') AS n, u.*
    FROM unnest($1::timestamptz[], $2::text[], $3::smallint[], $4::text[], $5::text[],
        $6::text[], $7::bigint[], $8::text[], $9::text[], $10::text[])
        AS u(at, outcome, status, reason, event, path, body_size, headers, peer, delivery_key)
) s
ON CONFLICT (slot) DO UPDATE SET id = excluded.id, at = excluded.at,
    outcome = excluded.outcome, status = excluded.status, reason = excluded.reason,
    event = excluded.event, path = excluded.path, body_size = excluded.body_size,
    headers = excluded.headers, peer = excluded.peer, delivery_key = excluded.delivery_key
"""
_encode: Final = msgspec.json.Encoder().encode


def _columns(entries: list[Entry]) -> list[list[Any]]:
    return [
        [e.at for e in entries],
        [e.outcome for e in entries],
        [e.status for e in entries],
        [e.reason for e in entries],
        [e.event for e in entries],
        [_clean(e.path) for e in entries],
        [e.body_size for e in entries],
        [_encode(e.headers).decode() for e in entries],
        [e.peer for e in entries],
        [e.delivery_key for e in entries],
    ]


def _clean(text: str) -> str:
    # A NUL cannot be stored in PostgreSQL's text; a path may carry one percent-decoded.
    return text.replace("\x00", "\ufffd")


def ensure_table(conn: psycopg.Connection[Any]) -> None:
    """Create the log's table and sequence if missing (by a session that migrates)."""
    if may_migrate(conn):
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {INTERNAL}")
        for statement in _DDL:
            conn.execute(statement)


_COLUMNS: Final = (
    "id, at, outcome, status, reason, event, path, body_size, headers, peer, delivery_key"
)


def read(
    conn: psycopg.Connection[Any],
    *,
    before: int | None = None,
    limit: int = 50,
    event: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Entry]:
    """Entries newest first, below id `before`, filtered."""
    if not _exists(conn):
        return []
    where, args = ["true"], []
    for clause, value in (
        ("id < %s", before),
        ("event = %s", event),
        ("outcome = %s", outcome),
        ("at >= %s", since),
        ("at < %s", until),
    ):
        if value is not None:
            where.append(clause)
            args.append(value)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM {_TABLE} WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT %s",
        (*args, limit),
    ).fetchall()
    return [_entry(row) for row in rows]


def _exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (_TABLE,)).fetchone()
    return bool(row and row[0])


def _entry(row: tuple[Any, ...]) -> Entry:
    ident, at, outcome, status, reason, event, path, size, headers, peer, key = row
    return Entry(
        id=ident,
        at=at,
        outcome=outcome,
        status=status,
        reason=reason,
        event=event,
        path=path,
        body_size=size,
        headers=msgspec.convert(headers, Headers),
        peer=peer,
        delivery_key=str(key) if key is not None else None,
    )


def recent_refusals(conn: psycopg.Connection[Any], seconds: float) -> list[Entry]:
    """The refusals of the last `seconds` (at most LOG_ROWS), newest first."""
    since = datetime.fromtimestamp(time.time() - seconds, UTC)
    return read(conn, limit=LOG_ROWS, outcome="rejected", since=since)


def count_refused(conn: psycopg.Connection[Any], since: datetime) -> int:
    """How many refusals the log holds since `since` (at most LOG_ROWS)."""
    if not _exists(conn):
        return 0
    row = conn.execute(
        f"SELECT count(*) FROM {_TABLE} WHERE outcome = 'rejected' AND at >= %s",
        (since,),
    ).fetchone()
    return int(row[0]) if row else 0
