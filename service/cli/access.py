"""Who may read what: `rollcall token` (API tokens) and `rollcall grant-analyst` (a
PostgreSQL login that reads the analytics schemas only)."""

from __future__ import annotations

import argparse
import sys

import psycopg

from service import tokens
from service.cli import Commands
from service.cli.database import admin_database, database
from service.config import Settings
from service.eventstore.database import Unusable, reason
from service.eventstore.roles import BadRoleName, grant_analyst
from service.tokens import SCOPES


def add_commands(commands: Commands) -> None:
    """Register token and grant-analyst."""
    token = commands.add_parser("token", help="issue an API token (shown once, stored hashed)")
    token.add_argument(
        "--scope",
        choices=SCOPES,
        default="read",
        help="read: the analyst API; admin: also rebuilds and the delivery log",
    )
    token.add_argument("--name", default="token", help="a label, to revoke it by later")
    token.add_argument("--revoke", action="store_true", help="revoke every token of --name")
    token.add_argument(
        "--event",
        action="append",
        metavar="SLUG",
        help="limit the token to this JTE event (repeatable; default: every event)",
    )
    token.set_defaults(run=run_token)

    analyst = commands.add_parser(
        "grant-analyst", help="create or update a PostgreSQL login that can read analytics only"
    )
    analyst.add_argument("name", help="the role name (lowercase letters, digits, _)")
    analyst.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    analyst.add_argument(
        "--event",
        action="append",
        metavar="SLUG",
        help="see only this JTE event's rows (repeatable; default: every event)",
    )
    analyst.set_defaults(run=run_grant_analyst)


def run_token(settings: Settings, args: argparse.Namespace) -> int:
    unknown = [slug for slug in args.event or () if settings.event(slug) is None]
    if unknown:
        print(f"rollcall: no JTE event {unknown[0][:64]!r} is configured", file=sys.stderr)
        return 2
    with database(settings, "token") as url, psycopg.connect(url, autocommit=True) as conn:
        if args.revoke:
            revoked = tokens.revoke(conn, args.name)
            if not revoked:
                print(f"rollcall: no live token is named {args.name!r}", file=sys.stderr)
                return 1
            print(f"revoked {revoked} token(s) named {args.name!r}")
        else:
            print(tokens.issue(conn, args.scope, args.name, args.event))
    return 0


def run_grant_analyst(settings: Settings, args: argparse.Namespace) -> int:
    unknown = [slug for slug in args.event or () if settings.event(slug) is None]
    if unknown:
        print(f"rollcall: no JTE event {unknown[0][:64]!r} is configured", file=sys.stderr)
        return 2
    password = sys.stdin.readline().strip() if args.password_stdin else None
    try:
        with admin_database(settings) as url, psycopg.connect(url, autocommit=True) as conn:
            password = grant_analyst(conn, args.name, password, args.event)
            database_name = conn.info.dbname
    except BadRoleName as error:
        print(f"rollcall: {error}", file=sys.stderr)
        return 2
    except psycopg.errors.InsufficientPrivilege as error:
        raise Unusable(
            f"{reason(error)} (grant-analyst needs a superuser's DATABASE_URL)"
        ) from error
    where = (
        f"the rows of {', '.join(sorted(set(args.event)))} in schema analytics_for_{args.name}"
        if args.event
        else "the analytics schemas"
    )
    print(f"role {args.name} can read {where} of database {database_name}; password: {password}")
    return 0
