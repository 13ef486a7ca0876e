"""PostgreSQL login roles for analysts: read the `analytics` schema, and nothing else.

Each analyst role is a member of the group `rollcall_analyst`, which may use the `analytics`
schemas (the live one and any as-of ones) and select from their views. It gets no privilege
on the event store (`rollcall`) or on the versioned tables (`rollcall_views`): the analytics
views read those with their owner's rights. Sessions also default to read-only.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Final

import psycopg
from psycopg import sql

from projections.schema import ANALYST_GROUP, grant_analysts

_ROLE_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class BadRoleName(ValueError):
    """The name cannot be a PostgreSQL role name we create."""


def grant_analyst(conn: psycopg.Connection[Any], name: str, password: str | None = None) -> str:
    """Create or update the login role `name` as an analyst; the password it can log in with."""
    if not _ROLE_NAME.match(name) or name == ANALYST_GROUP:
        raise BadRoleName(
            f"{name!r}: use lowercase letters, digits and _ (starting with a letter), max 63"
        )
    password = password or secrets.token_urlsafe(24)
    role, group = sql.Identifier(name), sql.Identifier(ANALYST_GROUP)
    with conn.transaction():
        if not _role_exists(conn, ANALYST_GROUP):
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(group))
        if _role_exists(conn, name):
            conn.execute(
                sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(role, sql.Literal(password))
            )
        else:
            conn.execute(
                sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {}").format(role, sql.Literal(password))
            )
        conn.execute(sql.SQL("GRANT {} TO {}").format(group, role))
        conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(role))
        database = sql.Identifier(conn.info.dbname)
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, group))
        for schema in _analytics_schemas(conn):
            grant_analysts(conn, schema)
    return password


def _role_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def _analytics_schemas(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname = 'analytics' "
        "OR nspname LIKE 'analytics\\_as\\_of\\_%' ORDER BY nspname"
    ).fetchall()
    return [row[0] for row in rows]
