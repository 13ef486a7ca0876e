"""Where the views live: versioned tables, the registry of versions, and the `analytics` schema.

Each view (roster, occupancy, payments) is built into tables suffixed with a version number in
schema `rollcall_views`. The registry says which version is live; schema `analytics` holds SQL
views over the live version's tables, so a rebuild fills a new version while the old one
serves, then swaps the `analytics` views in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final, Literal

import msgspec
import psycopg
from psycopg import sql

log = logging.getLogger("rollcall.projections")

VIEWS_SCHEMA: Final = "rollcall_views"
ANALYTICS: Final = "analytics"
# rollcall's own tables: the event store (service/eventstore), the registry of view versions,
# dead letters, tracking, API tokens and roles.
INTERNAL: Final = "rollcall"
VIEW_VERSIONS: Final = "view_versions"
DEAD_LETTERS: Final = "dead_letters"
TRACKING_TABLE: Final = "projection_tracking"
# Which role does what in this database (service/eventstore/roles.py): a role is given rights
# here only once it is recorded here, never because a role of some name exists.
ROLES_TABLE: Final = "roles"
# Analyst logins limited to some JTE events (`rollcall grant-analyst NAME --event SLUG`), and
# the prefix of the schema each reads instead of `analytics` (see publish_tenant_views).
ANALYST_EVENTS: Final = "analyst_events"
TENANT_PREFIX: Final = "analytics_for_"
# Before rollcall scoped analyst grants to one database, one server-wide group held them all.
LEGACY_ANALYST_GROUP: Final = "rollcall_analyst"

State = Literal["live", "building", "retired", "as-of"]

# Advisory lock keys, all in one namespace (classid) of their own.
LOCK_NAMESPACE: Final = 0x524C  # "RL"
SETUP_LOCK: Final = 1
SWAP_LOCK: Final = 2
_RUNNER_LOCKS: Final = {
    "roster": 11,
    "occupancy": 12,
    "payments": 13,
    "occurrences": 14,
    "roster_history": 15,
}
_BUILD_LOCKS: Final = {
    "roster": 21,
    "occupancy": 22,
    "payments": 23,
    "occurrences": 24,
    "roster_history": 25,
}


class Version(msgspec.Struct, frozen=True):
    """One build of one view."""

    view: str
    version: int
    state: State

    @property
    def tracking_name(self) -> str:
        return f"{self.view}_v{self.version}"

    def table(self, name: str) -> sql.Identifier:
        """The physical table `name` of this version."""
        return sql.Identifier(VIEWS_SCHEMA, f"{name}_v{self.version}")


def runner_lock(view: str) -> int:
    return _RUNNER_LOCKS[view]


def build_lock(view: str) -> int:
    return _BUILD_LOCKS[view]


Connection = psycopg.Connection[Any]
TableDDL = Callable[[Version], list[sql.Composed]]

_INTERNAL_DDL: Final = [
    f"CREATE SCHEMA IF NOT EXISTS {INTERNAL}",
    f"CREATE SCHEMA IF NOT EXISTS {VIEWS_SCHEMA}",
    f"CREATE SCHEMA IF NOT EXISTS {ANALYTICS}",
    # Trigram indexes make the roster's `q=` search an index lookup (projections/roster.py).
    # pg_trgm ships with PostgreSQL (contrib) and is trusted: database CREATE rights suffice.
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    f"""CREATE TABLE IF NOT EXISTS {INTERNAL}.{VIEW_VERSIONS} (
        view text NOT NULL,
        version integer NOT NULL,
        state text NOT NULL,
        as_of timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        published_at timestamptz,
        last_error text,
        failed_at timestamptz,
        PRIMARY KEY (view, version))""",
    f"""CREATE TABLE IF NOT EXISTS {INTERNAL}.{DEAD_LETTERS} (
        view text NOT NULL,
        version integer NOT NULL,
        position bigint NOT NULL,
        delivery_key uuid NOT NULL,
        slug text,
        attendee_id text,
        event_type text,
        error text NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (view, version, position))""",
    f"""CREATE TABLE IF NOT EXISTS {INTERNAL}.{ROLES_TABLE} (
        purpose text PRIMARY KEY CHECK (purpose IN ('owner', 'runtime', 'analysts')),
        role text NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS {INTERNAL}.{ANALYST_EVENTS} (
        role text NOT NULL, slug text NOT NULL, PRIMARY KEY (role, slug))""",
]


def may_migrate(conn: Connection) -> bool:
    """Whether this session creates and migrates rollcall's schema: a superuser, the owner of
    schema `rollcall` (or a member of it), or anyone while that schema does not exist yet.
    The runtime role of `rollcall db setup` does not: its owner role migrates."""
    row = conn.execute(
        "SELECT r.rolsuper OR n.nspowner IS NULL OR pg_has_role(n.nspowner, 'USAGE') "
        "FROM pg_roles r LEFT JOIN pg_namespace n ON n.nspname = %s "
        "WHERE r.rolname = current_user",
        (INTERNAL,),
    ).fetchone()
    return bool(row and row[0])


def ensure_internal(conn: Connection) -> None:
    """Create the registry, dead-letter and roles tables and the schemas if missing
    (idempotent); a session that does not migrate (see may_migrate) leaves them as they are."""
    if not may_migrate(conn):
        return
    for statement in _INTERNAL_DDL:
        conn.execute(statement)
    revoke_legacy_analysts(conn)


def recorded_role(conn: Connection, purpose: str) -> str | None:
    """The role recorded for `purpose` (owner, runtime, analysts) in this database, if any."""
    table = conn.execute("SELECT to_regclass(%s)", (f"{INTERNAL}.{ROLES_TABLE}",)).fetchone()
    if table is None or table[0] is None:
        return None
    row = conn.execute(
        f"SELECT role FROM {INTERNAL}.{ROLES_TABLE} WHERE purpose = %s", (purpose,)
    ).fetchone()
    return str(row[0]) if row else None


def analytics_schemas(conn: Connection) -> list[str]:
    """The live `analytics` schema and every `analytics_as_of_*` one in this database."""
    rows = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname = %s "
        "OR nspname LIKE 'analytics\\_as\\_of\\_%%' ORDER BY nspname",
        (ANALYTICS,),
    ).fetchall()
    return [row[0] for row in rows]


def revoke_legacy_analysts(conn: Connection) -> None:
    """Take from the old server-wide analyst group whatever it holds in this database: it let
    an analyst of one database read every other one's views (run `grant-analyst` again)."""
    exists = conn.execute(
        "SELECT 1 FROM pg_roles WHERE rolname = %s", (LEGACY_ANALYST_GROUP,)
    ).fetchone()
    if not exists:
        return
    group = sql.Identifier(LEGACY_ANALYST_GROUP)
    statements = [
        sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(conn.info.dbname), group)
    ]
    for schema in analytics_schemas(conn):
        statements.append(
            sql.SQL(
                "REVOKE ALL ON SCHEMA {0} FROM {1}; REVOKE ALL ON ALL TABLES IN SCHEMA {0} FROM {1}"
            ).format(sql.Identifier(schema), group)
        )
    try:
        with conn.transaction():
            for statement in statements:
                conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        # Views this session does not own: `rollcall db setup` (a superuser) revokes those.
        log.warning("could not revoke the old group %s's rights here", LEGACY_ANALYST_GROUP)


@contextmanager
def advisory_lock(conn: Connection, key: int) -> Iterator[None]:
    """Hold a session advisory lock (waiting for it) for the duration of the block."""
    conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, key))
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, key))


def try_lock(conn: Connection, key: int) -> bool:
    """Take a session advisory lock if nobody holds it."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_NAMESPACE, key)).fetchone()
    return bool(row and row[0])


def unlock(conn: Connection, key: int) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, key))


def versions(conn: Connection, view: str | None = None) -> list[Version]:
    """Registered versions, oldest first."""
    rows = conn.execute(
        f"SELECT view, version, state FROM {INTERNAL}.{VIEW_VERSIONS} "
        "WHERE %s::text IS NULL OR view = %s ORDER BY view, version",
        (view, view),
    ).fetchall()
    return [Version(r[0], r[1], r[2]) for r in rows]


def live_version(conn: Connection, view: str) -> Version | None:
    return next((v for v in versions(conn, view) if v.state == "live"), None)


def create_version(
    conn: Connection, view: str, state: State, ddl: TableDDL, as_of: object = None
) -> Version:
    """Register the next version of a view and create its empty tables."""
    row = conn.execute(
        f"SELECT coalesce(max(version), 0) + 1 FROM {INTERNAL}.{VIEW_VERSIONS} WHERE view = %s",
        (view,),
    ).fetchone()
    assert row is not None
    version = Version(view, int(row[0]), state)
    conn.execute(
        f"INSERT INTO {INTERNAL}.{VIEW_VERSIONS} (view, version, state, as_of) "
        "VALUES (%s, %s, %s, %s)",
        (view, version.version, state, as_of),
    )
    for statement in ddl(version):
        conn.execute(statement)
    return version


def set_state(conn: Connection, version: Version, state: State) -> Version:
    conn.execute(
        f"UPDATE {INTERNAL}.{VIEW_VERSIONS} SET state = %s, "
        "published_at = CASE WHEN %s IN ('live', 'as-of') THEN now() ELSE published_at END "
        "WHERE view = %s AND version = %s",
        (state, state, version.view, version.version),
    )
    return Version(version.view, version.version, state)


def publish_views(
    conn: Connection, schema: str, statements: list[tuple[str, sql.Composed]]
) -> None:
    """(Re)create the SQL views of one view version in `schema`; readable by analysts (and,
    in `analytics`, by each event-limited analyst through their own schema)."""
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    tenants = _tenants(conn) if schema == ANALYTICS else {}
    for role in tenants:
        # Their views read `analytics`'s: dropped first, made again below.
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(TENANT_PREFIX + role))
        )
    for name, select in statements:
        target = sql.Identifier(schema, name)
        # DROP + CREATE rather than CREATE OR REPLACE: a new version may change columns.
        conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(target))
        conn.execute(sql.SQL("CREATE VIEW {} AS {}").format(target, select))
    grant_analysts(conn, schema)
    for role, slugs in tenants.items():
        publish_tenant_views(conn, role, slugs)


def _tenants(conn: Connection) -> dict[str, list[str]]:
    """Each event-limited analyst and their events."""
    table = conn.execute("SELECT to_regclass(%s)", (f"{INTERNAL}.{ANALYST_EVENTS}",)).fetchone()
    if table is None or table[0] is None:
        return {}
    rows = conn.execute(
        f"SELECT role, array_agg(slug ORDER BY slug) FROM {INTERNAL}.{ANALYST_EVENTS} "
        "GROUP BY role ORDER BY role"
    ).fetchall()
    return {row[0]: list(row[1]) for row in rows}


def publish_tenant_views(conn: Connection, role: str, slugs: list[str]) -> None:
    """Schema `analytics_for_<role>`: every `analytics` view, limited to `slugs`'s rows, as a
    security barrier (no function in an analyst's query sees a row of another event first);
    readable by `role` only. The role gets no right on `analytics` itself."""
    schema = sql.Identifier(TENANT_PREFIX + role)
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    names = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind = 'v' ORDER BY 1",
        (ANALYTICS,),
    ).fetchall()
    for (name,) in names:
        conn.execute(
            sql.SQL(
                "CREATE VIEW {} WITH (security_barrier) AS SELECT * FROM {} "
                "WHERE event = ANY({}::text[])"
            ).format(
                sql.Identifier(TENANT_PREFIX + role, name),
                sql.Identifier(ANALYTICS, name),
                sql.Literal(slugs),
            )
        )
    conn.execute(
        sql.SQL(
            "GRANT USAGE ON SCHEMA {0} TO {1}; GRANT SELECT ON ALL TABLES IN SCHEMA {0} TO {1}"
        ).format(schema, sql.Identifier(role))
    )


def grant_analysts(conn: Connection, schema: str) -> None:
    """Let this database's analyst group read everything in `schema`, once `rollcall
    grant-analyst` has made and recorded that group here (never a group of another database)."""
    group = recorded_role(conn, "analysts")
    if group is not None:
        conn.execute(
            sql.SQL(
                "GRANT USAGE ON SCHEMA {0} TO {1}; GRANT SELECT ON ALL TABLES IN SCHEMA {0} TO {1}"
            ).format(sql.Identifier(schema), sql.Identifier(group))
        )


def drop_tables(conn: Connection, version: Version, tables: tuple[str, ...]) -> None:
    """Drop a version's tables, and the trigger functions made for them (named after them)."""
    for name in tables:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(version.table(name)))
    functions = conn.execute(
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = %s AND p.proname LIKE ANY(%s)",
        (VIEWS_SCHEMA, [f"{name}\\_v{version.version}\\_%" for name in tables]),
    ).fetchall()
    for (function,) in functions:
        conn.execute(
            sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(VIEWS_SCHEMA, function))
        )


def record_failure(conn: Connection, views: list[str], error: str) -> None:
    """Mark the live versions of `views` failed, with the error, for status and metrics."""
    conn.execute(
        f"UPDATE {INTERNAL}.{VIEW_VERSIONS} SET last_error = %s, failed_at = now() "
        "WHERE state = 'live' AND view = ANY(%s)",
        (error, views),
    )


def clear_failure(conn: Connection, views: list[str]) -> None:
    """The live versions of `views` work again."""
    conn.execute(
        f"UPDATE {INTERNAL}.{VIEW_VERSIONS} SET last_error = NULL, failed_at = NULL "
        "WHERE state = 'live' AND view = ANY(%s)",
        (views,),
    )


def note_build_error(conn: Connection, building: list[Version], error: str | None) -> None:
    """Keep (or, with None, clear) what stopped a build with its unfinished versions."""
    for version in building:
        conn.execute(
            f"UPDATE {INTERNAL}.{VIEW_VERSIONS} SET last_error = %s "
            "WHERE view = %s AND version = %s AND state = 'building'",
            (error, version.view, version.version),
        )


def as_of(conn: Connection, version: Version) -> datetime | None:
    """The past instant a version is built as of, if it is one of those."""
    row = conn.execute(
        f"SELECT as_of FROM {INTERNAL}.{VIEW_VERSIONS} WHERE view = %s AND version = %s",
        (version.view, version.version),
    ).fetchone()
    return row[0] if row else None


def errors(conn: Connection) -> dict[tuple[str, int], str]:
    """The last error of each version that has one."""
    rows = conn.execute(
        f"SELECT view, version, last_error FROM {INTERNAL}.{VIEW_VERSIONS} "
        "WHERE last_error IS NOT NULL"
    ).fetchall()
    return {(r[0], r[1]): r[2] for r in rows}


def dead_letter_counts(conn: Connection) -> dict[tuple[str, int], int]:
    """How many deliveries each version dead-lettered."""
    rows = conn.execute(
        f"SELECT view, version, count(*) FROM {INTERNAL}.{DEAD_LETTERS} GROUP BY view, version"
    ).fetchall()
    return {(r[0], r[1]): int(r[2]) for r in rows}
