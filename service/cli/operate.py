"""Operator commands: project, rebuild, status, replay, token, grant-analyst, db setup."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from types import FrameType
from typing import Any, Final

import msgspec
import psycopg

from domain.interpret import parse_time
from projections.fold import PoisonError
from projections.rebuild import BuildBusy, Progress, build_as_of, rebuild
from projections.registry import VIEW_NAMES
from projections.runner import Runner
from projections.schema import INTERNAL
from projections.status import ViewStatus, read_status
from service.config import Settings
from service.eventstore.analysts import BadRoleName, grant_analyst
from service.eventstore.database import Unusable, connect, reason, server
from service.eventstore.replay import replay_quarantined
from service.eventstore.roles import check_runtime, set_up
from service.eventstore.source import SOURCE
from service.eventstore.store import EVENTS_TABLE, DeliveryStore
from service.http import tokens
from service.http.tokens import SCOPES

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


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register project, rebuild, status and replay on the `rollcall` parser."""
    project = commands.add_parser("project", help="run the projection runner alone (no HTTP)")
    project.set_defaults(run=run_project)

    build = commands.add_parser(
        "rebuild", help="rebuild views from the first event, then swap them in (blue/green)"
    )
    build.add_argument("view", choices=[*VIEW_NAMES, "all"])
    build.add_argument(
        "--skip-poison", action="store_true", help="dead-letter events a view cannot apply"
    )
    build.add_argument(
        "--as-of", metavar="TIME", help="build the views as they stood then, into their own schema"
    )
    build.add_argument("--batch-size", type=int, default=5000)
    build.set_defaults(run=run_rebuild)

    status = commands.add_parser("status", help="where each view stands")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=run_status)

    replay = commands.add_parser(
        "replay", help="append the quarantined deliveries the current parser can now read"
    )
    replay.set_defaults(run=run_replay)

    token = commands.add_parser("token", help="issue an API token (shown once, stored hashed)")
    token.add_argument("--scope", choices=SCOPES, default="read")
    token.add_argument("--name", default="token", help="a label, to revoke it by later")
    token.add_argument("--revoke", action="store_true", help="revoke every token of --name")
    token.set_defaults(run=run_token)

    analyst = commands.add_parser(
        "grant-analyst", help="create or update a PostgreSQL login that can read analytics only"
    )
    analyst.add_argument("name", help="the role name (lowercase letters, digits, _)")
    analyst.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    analyst.set_defaults(run=run_grant_analyst)

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


def run_project(settings: Settings, args: argparse.Namespace) -> int:
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with database(settings, "project", created=False) as url:
        Runner(url, SOURCE).run(stop)
    return 0


def run_rebuild(settings: Settings, args: argparse.Namespace) -> int:
    views = list(VIEW_NAMES) if args.view == "all" else [args.view]
    as_of = _as_of(args.as_of) if args.as_of else None
    show = _ProgressBar()
    try:
        with database(settings, "rebuild") as url:
            if as_of is not None:
                schema = build_as_of(
                    url, views, SOURCE, as_of, skip_poison=args.skip_poison, on_progress=show
                )
                show.finish(
                    f"built {', '.join(views)} as of {as_of.isoformat()} into schema {schema}"
                )
            else:
                built = rebuild(
                    url,
                    views,
                    SOURCE,
                    skip_poison=args.skip_poison,
                    on_progress=show,
                    batch_size=args.batch_size,
                )
                names = ", ".join(f"{v.view} v{v.version}" for v in built)
                show.finish(f"rebuilt and swapped in: {names}")
    except KeyboardInterrupt:
        show.finish("interrupted: the live views are untouched; run the same command to resume")
        return 130
    except (BuildBusy, PoisonError) as error:
        show.finish(f"rollcall: {error}")
        if isinstance(error, PoisonError):
            print("rerun with --skip-poison to dead-letter such events instead", file=sys.stderr)
        return 1
    return 0


def run_status(settings: Settings, args: argparse.Namespace) -> int:
    with database(settings, "status") as url, psycopg.connect(url) as conn:
        statuses = read_status(conn, SOURCE)
    if args.json:
        print(msgspec.json.encode(statuses).decode())
    else:
        print(_status_table(statuses))
    return 1 if any(s.state == "failed" for s in statuses) else 0


def run_replay(settings: Settings, args: argparse.Namespace) -> int:
    with database(settings, "replay") as url:
        store = DeliveryStore(url)
        try:
            report = replay_quarantined(store)
        finally:
            store.close()
    print(
        f"scanned {report.scanned} deliveries: {report.quarantined} quarantined, "
        f"{report.readable_now} readable now, {report.appended} appended, "
        f"{report.already_replayed} replayed before"
    )
    return 0


def run_token(settings: Settings, args: argparse.Namespace) -> int:
    with database(settings, "token") as url, psycopg.connect(url, autocommit=True) as conn:
        if args.revoke:
            print(f"revoked {tokens.revoke(conn, args.name)} token(s) named {args.name!r}")
        else:
            print(tokens.issue(conn, args.scope, args.name))
    return 0


def run_grant_analyst(settings: Settings, args: argparse.Namespace) -> int:
    password = sys.stdin.readline().strip() if args.password_stdin else None
    try:
        with admin_database(settings) as url, psycopg.connect(url, autocommit=True) as conn:
            password = grant_analyst(conn, args.name, password)
            database_name = conn.info.dbname
    except BadRoleName as error:
        print(f"rollcall: {error}", file=sys.stderr)
        return 2
    except psycopg.errors.InsufficientPrivilege as error:
        raise Unusable(
            f"{reason(error)} (grant-analyst needs a superuser's DATABASE_URL)"
        ) from error
    print(
        f"role {args.name} can read the analytics schemas of database {database_name}; "
        f"password: {password}"
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


def _as_of(text: str) -> datetime:
    when = parse_time(text)
    if when is None:
        raise SystemExit(f"rollcall: --as-of {text!r} is not an ISO 8601 time")
    return when


def _status_table(statuses: list[ViewStatus]) -> str:
    lines = [
        f"{'view':10} {'version':>7} {'state':10} {'position':>10} {'head':>10} "
        f"{'lag':>8} {'lag s':>8} {'dead':>6}  rebuilding / last error"
    ]
    for s in statuses:
        extra = f"v{s.rebuilding.version} at {s.rebuilding.position}" if s.rebuilding else ""
        if s.rebuilding and s.rebuilding.error:
            extra += f" stopped: {s.rebuilding.error}"
        if s.last_error:
            extra = (extra + "  " if extra else "") + s.last_error
        lines.append(
            f"{s.view:10} {s.version or '-':>7} {s.state:10} {s.position:>10} {s.head:>10} "
            f"{s.lag_events:>8} {s.lag_seconds:>8.1f} {s.dead_letters:>6}  {extra}"
        )
    return "\n".join(lines)


class _ProgressBar:
    """A one-line progress bar on stderr: share done, events/s, ETA."""

    def __init__(self) -> None:
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._last < (0.2 if self._tty else 5.0) and progress.position < progress.head:
            return
        self._last = now
        share = min(1.0, progress.done / progress.total)
        bar = "#" * int(share * 30)
        eta = f"{progress.eta:.0f}s" if progress.eta is not None else "?"
        line = (
            f"[{bar:30}] {share:4.0%} {progress.done:,}/{progress.total:,} events "
            f"{progress.rate:,.0f}/s ETA {eta}"
        )
        print(
            ("\r" if self._tty else "") + line,
            end="" if self._tty else "\n",
            file=sys.stderr,
            flush=True,
        )

    def finish(self, message: str) -> None:
        if self._tty:
            print(file=sys.stderr)
        print(message, file=sys.stderr)
