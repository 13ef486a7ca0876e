"""Two PostgreSQL roles per rollcall database (`rollcall db setup`; `rollcall serve` on the
embedded default does it by itself).

- The **owner** (NOLOGIN) owns schema `rollcall`: the event store, its append-only triggers,
  the registry, tracking and token tables. Only it, or a superuser, could alter them.
- The **runtime** role (LOGIN) is what serve, project and rebuild connect as. It may read and
  append deliveries (never update, delete, truncate, alter or disable a trigger), keep the
  registry, tracking and tokens, and owns what it writes: the views' schemas
  `rollcall_views`, `analytics` and `analytics_as_of_*` (so it may create schemas).

Roles belong to the whole server, so each name is derived from the database's, and each role
carries a comment naming the database it serves: a role of that name without it is refused,
never adopted. Connecting to the database is taken from PUBLIC and given to these roles (and
to the analyst group, by `rollcall grant-analyst`).

Analysts (`rollcall grant-analyst`) get login roles that read one database's `analytics`
schemas, nothing else. Grants go through a group of this database's own (`<database>_analysts`),
made by the first `grant-analyst` here and recorded here: the views of this database are
granted to that group only, and no database grants anything to a group it has not recorded. A
login granted here is a member of this database's group and of no other database's. It gets no
privilege on the event store (`rollcall`) or the versioned tables (`rollcall_views`): the
analytics views read those with their owner's rights. Sessions also default to read-only.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any, Final, Literal

import msgspec
import psycopg
from psycopg import sql

from projections.schema import (
    ANALYST_EVENTS,
    ANALYTICS,
    DEAD_LETTERS,
    INTERNAL,
    LEGACY_ANALYST_GROUP,
    ROLES_TABLE,
    SETUP_LOCK,
    TENANT_PREFIX,
    TRACKING_TABLE,
    VIEW_VERSIONS,
    VIEWS_SCHEMA,
    advisory_lock,
    analytics_schemas,
    ensure_internal,
    grant_analysts,
    publish_tenant_views,
    recorded_role,
)
from projections.tracking import view_tracking
from service import intake_log, tokens
from service.eventstore import keys
from service.eventstore.database import Unusable, connect, with_user
from service.eventstore.store import EVENTS_TABLE, LOCK_FUNCTION, ensure_store
from service.intake_log import LOG_SEQUENCE, LOG_TABLE
from service.tokens import TOKENS_TABLE

Purpose = Literal["owner", "runtime", "analysts"]
_SUFFIX: Final = {"owner": "_owner", "runtime": "_app", "analysts": "_analysts"}
_NAME_MAX: Final = 63  # PostgreSQL's identifier limit (bytes)
# What the runtime role may do to the owner's tables in schema `rollcall`.
_RUNTIME_TABLES: Final = {
    EVENTS_TABLE: "SELECT, INSERT",
    VIEW_VERSIONS: "SELECT, INSERT, UPDATE",
    DEAD_LETTERS: "SELECT, INSERT, UPDATE",
    TRACKING_TABLE: "SELECT, INSERT, UPDATE",
    TOKENS_TABLE: "SELECT, INSERT, UPDATE",
    ROLES_TABLE: "SELECT",
    ANALYST_EVENTS: "SELECT",
    # Data keys change only through the owner's functions (keys.py); reading them is needed.
    keys.KEYS_TABLE: "SELECT",
    keys.EMAILS_TABLE: "SELECT",
    keys.STATE_TABLE: "SELECT",
    LOG_TABLE: "SELECT, INSERT, UPDATE",
}


class Setup(msgspec.Struct, frozen=True, kw_only=True):
    """What `rollcall db setup` made of a database."""

    database: str
    owner: str
    runtime: str
    runtime_url: str  # holds the password only when one was set by this run
    password_set: bool


def role_name(database: str, purpose: Purpose) -> str:
    """The role of `purpose` for `database`: `<database>_owner`, `_app` or `_analysts`, made
    safe (lowercase letters, digits, _) and short enough, with a hash where it had to change."""
    base = re.sub(r"[^a-z0-9_]", "_", database.lower())
    if not re.match(r"[a-z_]", base):
        base = "r" + base
    limit = _NAME_MAX - len("_analysts")
    if base != database or len(base) > limit:
        digest = hashlib.sha256(database.encode()).hexdigest()[:8]
        base = f"{base[: limit - 9]}_{digest}"
    return base + _SUFFIX[purpose]


def claim_role(conn: psycopg.Connection[Any], purpose: Purpose, *, login: bool) -> bool:
    """Create this database's role of `purpose` if missing (True), or check that the existing
    one is ours for this database (False); Unusable if a foreign role has its name."""
    database = conn.info.dbname
    name = role_name(database, purpose)
    label = f"rollcall {purpose} role of database {database}"
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s", (name,)
    ).fetchone()
    if row is not None:
        if row[0] != label:
            raise Unusable(
                f"role {name} exists but is not rollcall's {purpose} role of database "
                f"{database}: rename or drop it, then run this again"
            )
        return False
    role = sql.Identifier(name)
    conn.execute(sql.SQL("CREATE ROLE {} " + ("LOGIN" if login else "NOLOGIN")).format(role))
    conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(role, sql.Literal(label)))
    return True


def set_up(admin_url: str, *, password: str | None = None, passwordless: bool = False) -> Setup:
    """Create or update the owner and runtime roles of `admin_url`'s database and the schema,
    owned and granted as the module says. `admin_url` names a superuser. The runtime role
    gets `password`, else a new random one when it is new to this database; none at all
    when `passwordless` (the embedded server trusts its socket)."""
    with connect(admin_url, autocommit=True) as conn, advisory_lock(conn, SETUP_LOCK):
        _require_superuser(conn)
        database = conn.info.dbname
        owner, runtime = role_name(database, "owner"), role_name(database, "runtime")
        claim_role(conn, "owner", login=False)
        created = claim_role(conn, "runtime", login=True)
        known = recorded_role(conn, "runtime") == runtime
        _create_schema(conn, admin_url)
        with conn.transaction():
            _hand_over(conn, owner, runtime)
            _grant(conn, database, runtime)
            _record(conn, {"owner": owner, "runtime": runtime})
        if passwordless:
            password = None
        elif password is None and (created or not known):
            # A database new to this role gets new credentials: whoever held the old ones
            # (a dropped database of the same name) does not inherit this one.
            password = secrets.token_urlsafe(24)
        if password is not None:
            conn.execute(
                sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
                    sql.Identifier(runtime), sql.Literal(password)
                )
            )
    return Setup(
        database=database,
        owner=owner,
        runtime=runtime,
        runtime_url=with_user(admin_url, runtime, password),
        password_set=password is not None,
    )


def check_runtime(conn: psycopg.Connection[Any], command: str) -> None:
    """Unusable if this database has a runtime role and this session is not it: what serve,
    project or rebuild create as another role, the runtime role could not replace later."""
    runtime = recorded_role(conn, "runtime")
    if runtime is not None and runtime != conn.info.user:
        raise Unusable(
            f"database {conn.info.dbname} is set up for two roles: run `rollcall {command}` "
            f"as {runtime} (DATABASE_URL naming it), not as {conn.info.user}"
        )


def owns_event_store(conn: psycopg.Connection[Any]) -> bool:
    """Whether this session could switch off the event store's append-only triggers."""
    row = conn.execute(
        "SELECT rolsuper OR pg_has_role(c.relowner, 'USAGE') FROM pg_roles r "
        "LEFT JOIN pg_class c ON c.oid = to_regclass(%s) WHERE r.rolname = current_user",
        (f"{INTERNAL}.{EVENTS_TABLE}",),
    ).fetchone()
    return bool(row and row[0])


def _require_superuser(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if not (row and row[0]):
        raise Unusable(
            f"`rollcall db setup` creates roles and hands objects over: {conn.info.user} is "
            "not a superuser; set DATABASE_URL to one (e.g. postgres)"
        )


def _create_schema(conn: psycopg.Connection[Any], admin_url: str) -> None:
    """Everything the owner owns, created as in a one-role setup (this session may: it is a
    superuser); _hand_over gives it to the owner afterwards."""
    ensure_store(admin_url, check_key=False)
    ensure_internal(conn)
    view_tracking(admin_url).ensure_table(conn)
    tokens.ensure_table(conn)
    intake_log.ensure_table(conn)


def _hand_over(conn: psycopg.Connection[Any], owner: str, runtime: str) -> None:
    """Give schema `rollcall` and what is in it to the owner, the views' schemas and what is in
    them to the runtime role; only where the owner differs (ALTER … OWNER locks the table)."""
    for schema in [INTERNAL, VIEWS_SCHEMA, *analytics_schemas(conn)]:
        to = owner if schema == INTERNAL else runtime
        _set_owner(conn, "SCHEMA", sql.Identifier(schema), schema_owner(conn, schema), to)
        relations = conn.execute(
            "SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'c')",
            (schema,),
        ).fetchall()
        for name, kind, current in relations:
            what = {"v": "VIEW", "m": "MATERIALIZED VIEW", "c": "TYPE"}.get(kind, "TABLE")
            _set_owner(conn, what, sql.Identifier(schema, name), current, to)
        functions = conn.execute(
            "SELECT p.oid::regprocedure::text, pg_get_userbyid(p.proowner) FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s",
            (schema,),
        ).fetchall()
        for signature, current in functions:
            _set_owner(conn, "FUNCTION", sql.SQL(signature), current, to)


def schema_owner(conn: psycopg.Connection[Any], schema: str) -> str | None:
    row = conn.execute(
        "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %s", (schema,)
    ).fetchone()
    return str(row[0]) if row else None


def _set_owner(
    conn: psycopg.Connection[Any], what: str, name: sql.Composable, current: str | None, to: str
) -> None:
    if current != to:
        conn.execute(sql.SQL("ALTER " + what + " {} OWNER TO {}").format(name, sql.Identifier(to)))


def _grant(conn: psycopg.Connection[Any], database: str, runtime: str) -> None:
    """Exactly the runtime role's rights (revoked first, so a rerun also takes back extras)."""
    role, db = sql.Identifier(runtime), sql.Identifier(database)
    lock = sql.Identifier(INTERNAL, LOCK_FUNCTION)
    statements = [
        sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db),
        # CREATE: for the schemas of `rollcall rebuild --as-of`.
        sql.SQL("GRANT CONNECT, TEMPORARY, CREATE ON DATABASE {} TO {}").format(db, role),
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(
            sql.Identifier(INTERNAL), role
        ),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(INTERNAL), role),
        *(
            sql.SQL("GRANT " + rights + " ON {} TO {}").format(
                sql.Identifier(INTERNAL, table), role
            )
            for table, rights in _RUNTIME_TABLES.items()
        ),
        sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
            sql.Identifier(INTERNAL, f"{EVENTS_TABLE}_notification_id_seq"), role
        ),
        sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
            sql.Identifier(INTERNAL, LOG_SEQUENCE), role
        ),
        sql.SQL("REVOKE ALL ON FUNCTION {}() FROM PUBLIC").format(lock),
        sql.SQL("GRANT EXECUTE ON FUNCTION {}() TO {}").format(lock, role),
        sql.SQL(
            "GRANT EXECUTE ON FUNCTION {}(bigint, text[], text[], text[], bytea[], bytea[], "
            "text[], text[]) TO {}"
        ).format(sql.Identifier(INTERNAL, keys.ADD_KEYS_FUNCTION), role),
        sql.SQL("GRANT EXECUTE ON FUNCTION {}(text, text, text, text[]) TO {}").format(
            sql.Identifier(INTERNAL, keys.ERASE_FUNCTION), role
        ),
        sql.SQL("GRANT EXECUTE ON FUNCTION {}(bytea) TO {}").format(
            sql.Identifier(INTERNAL, keys.INIT_FUNCTION), role
        ),
        sql.SQL("GRANT EXECUTE ON FUNCTION {}(text, text) TO {}").format(
            sql.Identifier(INTERNAL, keys.LIFT_FUNCTION), role
        ),
    ]
    for statement in statements:
        conn.execute(statement)


def _record(conn: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    for purpose, role in roles.items():
        conn.execute(
            f"INSERT INTO {INTERNAL}.{ROLES_TABLE} (purpose, role) VALUES (%s, %s) "
            "ON CONFLICT (purpose) DO UPDATE SET role = excluded.role",
            (purpose, role),
        )


_ROLE_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class BadRoleName(ValueError):
    """The name cannot be a PostgreSQL role name we create."""


def grant_analyst(
    conn: psycopg.Connection[Any],
    name: str,
    password: str | None = None,
    events: list[str] | None = None,
) -> str:
    """Create or update the login role `name` as an analyst of this database; the password it
    can log in with. `conn` is a superuser's (it creates roles). With `events`, the role reads
    only those JTE events' rows, in schema `analytics_for_<name>` (its search path), and no
    other analytics schema; without, every analytics schema (through the analyst group)."""
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
        conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(role))
        database = sql.Identifier(conn.info.dbname)
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, group))
        tenant = sql.Identifier(TENANT_PREFIX + name)
        conn.execute(f"DELETE FROM {INTERNAL}.{ANALYST_EVENTS} WHERE role = %s", (name,))
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(tenant))
        if events:
            conn.execute(sql.SQL("REVOKE {} FROM {}").format(group, role))
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, role))
            conn.execute(
                f"INSERT INTO {INTERNAL}.{ANALYST_EVENTS} (role, slug) "
                "SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING",
                (name, sorted(set(events))),
            )
            conn.execute(sql.SQL("ALTER ROLE {} SET search_path = {}").format(role, tenant))
            # Made as the owner of `analytics`, which remakes them whenever it republishes.
            owner = conn.execute(
                "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s",
                (ANALYTICS,),
            ).fetchone()
            if owner is not None:
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner[0])))
                publish_tenant_views(conn, name, sorted(set(events)))
                conn.execute("RESET ROLE")
        else:
            conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(database, role))
            conn.execute(sql.SQL("ALTER ROLE {} RESET search_path").format(role))
            conn.execute(sql.SQL("GRANT {} TO {}").format(group, role))
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
