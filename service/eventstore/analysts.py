"""PostgreSQL login roles for analysts: read one database's `analytics` schemas, nothing else.

Roles belong to the whole server, so grants go through a group of this database's own
(`<database>_analysts`, named as in service/roles.py), made by the first `rollcall
grant-analyst` here and recorded here: the views of this database are granted to that group
only, and no database grants anything to a group it has not recorded. A login granted here is
a member of this database's group and of no other database's. It gets no privilege on the
event store (`rollcall`) or the versioned tables (`rollcall_views`): the analytics views read
those with their owner's rights. Sessions also default to read-only.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Final

import psycopg
from psycopg import sql

from projections.schema import (
    INTERNAL,
    LEGACY_ANALYST_GROUP,
    ROLES_TABLE,
    analytics_schemas,
    ensure_internal,
    grant_analysts,
    recorded_role,
)
from service.eventstore.roles import claim_role, role_name

_ROLE_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class BadRoleName(ValueError):
    """The name cannot be a PostgreSQL role name we create."""


def grant_analyst(conn: psycopg.Connection[Any], name: str, password: str | None = None) -> str:
    """Create or update the login role `name` as an analyst of this database; the password it
    can log in with. `conn` is a superuser's (it creates roles)."""
    if not _ROLE_NAME.match(name) or name == LEGACY_ANALYST_GROUP:
        raise BadRoleName(
            f"{name!r}: use lowercase letters, digits and _ (starting with a letter), max 63"
        )
    password = password or secrets.token_urlsafe(24)
    role = sql.Identifier(name)
    with conn.transaction():
        _refuse_special(conn, name)
        ensure_internal(conn)
        group = sql.Identifier(_analyst_group(conn))
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
        for schema in analytics_schemas(conn):
            grant_analysts(conn, schema)
    return password


def _analyst_group(conn: psycopg.Connection[Any]) -> str:
    """This database's analyst group, created and recorded here if it is not yet."""
    name = role_name(conn.info.dbname, "analysts")
    recorded = recorded_role(conn, "analysts")
    created = claim_role(conn, "analysts", login=False)
    if recorded != name:
        if not created:
            # Left by an earlier database of the same name: its members were granted there,
            # not here, so they are not members here until granted again.
            members = conn.execute(
                "SELECT m.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid "
                "JOIN pg_roles m ON m.oid = a.member WHERE g.rolname = %s",
                (name,),
            ).fetchall()
            for (member,) in members:
                conn.execute(
                    sql.SQL("REVOKE {} FROM {}").format(
                        sql.Identifier(name), sql.Identifier(member)
                    )
                )
        conn.execute(
            f"INSERT INTO {INTERNAL}.{ROLES_TABLE} (purpose, role) VALUES ('analysts', %s) "
            "ON CONFLICT (purpose) DO UPDATE SET role = excluded.role",
            (name,),
        )
    return name


def _refuse_special(conn: psycopg.Connection[Any], name: str) -> None:
    """A superuser or one of rollcall's own roles is never turned into an analyst."""
    row = conn.execute(
        "SELECT rolsuper, coalesce(shobj_description(oid, 'pg_authid'), '') "
        "FROM pg_roles WHERE rolname = %s",
        (name,),
    ).fetchone()
    if row is not None and (row[0] or row[1].startswith("rollcall ")):
        raise BadRoleName(f"{name!r} is a superuser or one of rollcall's own roles")


def _role_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None
