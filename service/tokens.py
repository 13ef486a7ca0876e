"""API tokens: issued once, stored only as a SHA-256 hash, each with a scope (read or admin) and
optionally the JTE events it is limited to (tenancy: NULL means every event).

A token is 32 random bytes; its hash is the key to its row, so checking one is a single lookup
and the stored hashes are useless to someone who reads the table.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any, Final, Literal

import asyncpg
import msgspec
import psycopg

from projections.schema import INTERNAL, may_migrate

Scope = Literal["read", "admin"]
SCOPES: Final = ("read", "admin")
_PREFIX: Final = "rc_"
CACHE_SECONDS: Final = 2.0  # how long a checked token's scope is trusted without a lookup
_CACHE_SIZE: Final = 1024
TOKENS_TABLE: Final = "api_tokens"
_TABLE: Final = f"{INTERNAL}.{TOKENS_TABLE}"
_DDL: Final = (
    f"CREATE TABLE IF NOT EXISTS {_TABLE} ("
    "hash text PRIMARY KEY, scope text NOT NULL CHECK (scope IN ('read', 'admin')), "
    "name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), revoked_at timestamptz)"
)
# Tokens limited to some JTE events (added after the table first shipped).
_EVENTS_DDL: Final = f"ALTER TABLE {_TABLE} ADD COLUMN IF NOT EXISTS events text[]"


class Grant(msgspec.Struct, frozen=True):
    """What a valid token grants: its scope, and the events it may see (None: all)."""

    scope: Scope
    events: frozenset[str] | None = None

    def sees(self, slug: str) -> bool:
        return self.events is None or slug in self.events


def ensure_table(conn: psycopg.Connection[Any]) -> None:
    """Create the tokens table if missing (by a session that migrates the schema)."""
    if may_migrate(conn):
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {INTERNAL}")
        conn.execute(_DDL)
        conn.execute(_EVENTS_DDL)


def issue(
    conn: psycopg.Connection[Any], scope: Scope, name: str, events: list[str] | None = None
) -> str:
    """A new token with `scope`, limited to `events` if given; it is shown once and never
    stored in the clear."""
    ensure_table(conn)
    token = _PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        f"INSERT INTO {_TABLE} (hash, scope, name, events) VALUES (%s, %s, %s, %s)",
        (_hash(token), scope, name, sorted(set(events)) if events else None),
    )
    return token


def revoke(conn: psycopg.Connection[Any], name: str) -> int:
    """Revoke every token issued under `name`; how many were."""
    ensure_table(conn)
    cur = conn.execute(
        f"UPDATE {_TABLE} SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL",
        (name,),
    )
    return cur.rowcount


async def scope_of(pool: asyncpg.Pool, token: str) -> Grant | None:
    """What a presented token grants, or None if it is unknown or revoked."""
    if not token.startswith(_PREFIX) or len(token) > 200:
        return None
    try:
        row = await pool.fetchrow(
            f"SELECT scope, events FROM {_TABLE} WHERE hash = $1 AND revoked_at IS NULL",
            _hash(token),
        )
    except asyncpg.UndefinedColumnError:  # a table from before tokens had events
        row = await pool.fetchrow(
            f"SELECT scope, NULL AS events FROM {_TABLE} WHERE hash = $1 AND revoked_at IS NULL",
            _hash(token),
        )
    except asyncpg.UndefinedTableError:
        return None  # no token was ever issued
    if row is None or row["scope"] not in SCOPES:
        return None
    events = row["events"]
    return Grant(row["scope"], frozenset(events) if events is not None else None)


async def name_of(pool: asyncpg.Pool, token: str) -> str:
    """The name a valid token was issued under (what an erasure records as its author)."""
    name = await pool.fetchval(f"SELECT name FROM {_TABLE} WHERE hash = $1", _hash(token))
    return str(name) if name is not None else "unknown"


class TokenCache:
    """Scopes of recently checked valid tokens: a reader polling the API costs one lookup per
    CACHE_SECONDS instead of a database round trip per request. A revoked token therefore
    stops working within CACHE_SECONDS; unknown tokens are never cached."""

    def __init__(self, seconds: float = CACHE_SECONDS) -> None:
        self._seconds = seconds
        self._checked: dict[str, tuple[Grant, float]] = {}  # token hash -> (grant, when)

    async def scope(self, pool: asyncpg.Pool, token: str) -> Grant | None:
        """What `token` grants, as scope_of says (at most CACHE_SECONDS ago)."""
        key = _hash(token)
        hit = self._checked.get(key)
        if hit is not None and time.monotonic() - hit[1] < self._seconds:
            return hit[0]
        scope = await scope_of(pool, token)
        self._checked.pop(key, None)
        if scope is not None:
            if len(self._checked) >= _CACHE_SIZE:
                del self._checked[next(iter(self._checked))]  # the oldest
            self._checked[key] = (scope, time.monotonic())
        return scope


def allows(granted: Scope, needed: Scope) -> bool:
    """Admin tokens can do what read tokens can."""
    return granted == "admin" or granted == needed


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
