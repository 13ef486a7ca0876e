"""Which database a command runs against (DATABASE_URL, or the embedded server of the data
directory), and the commands about the database itself: `rollcall replay` and `rollcall db
setup`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import msgspec
import psycopg

from projections.schema import INTERNAL
from service.cli import Commands
from service.cli.progress import ProgressBar
from service.config import Settings
from service.eventstore.database import Unusable, connect, server
from service.eventstore.replay import replay_quarantined
from service.eventstore.roles import check_runtime, set_up
from service.eventstore.store import EVENTS_TABLE, DeliveryStore

# What these create in the views' schemas, the runtime role could not drop later if another
# role made it: on a database set up for two roles, they run as its runtime role only.
RUNTIME_COMMANDS: Final = ("serve", "project", "rebuild")


@contextmanager
def database(settings: Settings, command: str, *, created: bool = True) -> Iterator[str]:
    """DATABASE_URL, or the embedded server of the data directory (started if it is not, and
    set up: this then yields its runtime role's URL). Unusable, before the command starts,
    if the database is unreachable, has no event store although the command needs one
    (`created`), or is set up for two roles and this is not its runtime role."""
    if settings.database_url is None:
        with server(None, settings.data_dir) as admin_url:
            yield set_up(admin_url, passwordless=True).runtime_url
        return
    with connect(settings.database_url, autocommit=True) as conn:
        require_store(conn, creatable=not created)
        if command in RUNTIME_COMMANDS:
            check_runtime(conn, command)
    yield settings.database_url


@contextmanager
def admin_database(settings: Settings) -> Iterator[str]:
    """As `database`, but the embedded server's superuser: to create and grant roles."""
    if settings.database_url is None:
        with server(None, settings.data_dir) as admin_url:
            set_up(admin_url, passwordless=True)
            yield admin_url
        return
    with connect(settings.database_url, autocommit=True) as conn:
        require_store(conn)
    yield settings.database_url


def require_store(conn: psycopg.Connection[Any], *, creatable: bool = False) -> None:
    """Unusable unless this database holds rollcall's event store (or, with `creatable`, this
    role may create it: serve and project set up an empty database)."""
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL, has_database_privilege(current_database(), 'CREATE')",
        (f"{INTERNAL}.{EVENTS_TABLE}",),
    ).fetchone()
    exists, may_create = row if row else (False, False)
    if exists:
        return
    if not creatable:
        raise Unusable(
            f"database {conn.info.dbname} has no rollcall event store (is DATABASE_URL right?): "
            "start `rollcall serve` on it once, or run `rollcall db setup`"
        )
    if not may_create:
        raise Unusable(
            f"database {conn.info.dbname} has no rollcall event store, and role "
            f"{conn.info.user} may not create one: run `rollcall db setup` as a superuser"
        )


def add_replay(commands: Commands) -> None:
    """Register replay."""
    replay = commands.add_parser(
        "replay", help="append the quarantined deliveries the current parser can now read"
    )
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    replay.set_defaults(run=run_replay)


def add_setup(commands: Commands) -> None:
    """Register db setup."""
    db = commands.add_parser("db", help="the database's roles and schema")
    actions = db.add_subparsers(required=True, metavar="ACTION")
    setup = actions.add_parser(
        "setup",
        help="create the owner and runtime roles and the schema (DATABASE_URL: a superuser); "
        "prints the runtime role's DATABASE_URL",
    )
    setup.add_argument(
        "--password-stdin", action="store_true", help="read the runtime role's password from stdin"
    )
    setup.set_defaults(run=run_db_setup)


def run_replay(settings: Settings, args: argparse.Namespace) -> int:
    with database(settings, "replay") as url:
        store = DeliveryStore(url)
        try:
            progress = ProgressBar("deliveries scanned")
            try:
                report = replay_quarantined(store, on_progress=progress)
            finally:
                progress.finish()
        finally:
            store.close()
    if args.json:
        print(msgspec.json.encode(report).decode())
        return 0
    print(
        f"scanned {report.scanned} deliveries: {report.quarantined} quarantined, "
        f"{report.readable_now} readable now, {report.appended} appended, "
        f"{report.already_replayed} replayed before"
    )
    return 0


def run_db_setup(settings: Settings, args: argparse.Namespace) -> int:
    password = sys.stdin.readline().strip() if args.password_stdin else ""
    with server(settings.database_url, settings.data_dir) as admin_url:
        done = set_up(
            admin_url, password=password or None, passwordless=settings.database_url is None
        )
    print(f"DATABASE_URL={done.runtime_url}")
    if settings.database_url is None:
        print(
            "the embedded server is set up (`rollcall serve` does this by itself)", file=sys.stderr
        )
    else:
        kept = "" if done.password_set else " (its password is unchanged: not shown)"
        print(
            f"database {done.database}: owner role {done.owner} owns the event store (no login); "
            f"runtime role {done.runtime} serves{kept}. Run serve, project, rebuild, replay, "
            "status and token with DATABASE_URL above; db setup and grant-analyst with a "
            "superuser's",
            file=sys.stderr,
        )
    return 0
