"""`rollcall serve` (the service, on DATABASE_URL or the embedded PostgreSQL) and `rollcall
secret` (a JTE event's webhook secret)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import uvicorn

from service.cli import Commands
from service.cli.database import require_store
from service.config import DEFAULT_SLUG, Settings, ensure_secrets, env_name
from service.eventstore.database import EmbeddedPostgres, Unusable, connect, redacted
from service.eventstore.roles import check_runtime, owns_event_store, set_up
from service.http.logs import logging_config
from service.metrics import MULTIPROC_ENV

log = logging.getLogger("rollcall")


def add_commands(commands: Commands) -> None:
    """Register serve and secret."""
    serve = commands.add_parser(
        "serve", help="run the service (embedded PostgreSQL unless DATABASE_URL)"
    )
    serve.add_argument("--host", help=f"default: {env_name('host')}, else 127.0.0.1")
    serve.add_argument("--port", type=int, help=f"default: {env_name('port')}, else 8000")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--access-log", action="store_true", help="log every request line")
    serve.add_argument(
        "--projections",
        choices=["process", "thread", "off"],
        help="where the live views are folded: a supervised child process of each server "
        "process (default), a thread of it, or not at all "
        f"(default: {env_name('projection_runner')} / {env_name('projections')})",
    )
    serve.set_defaults(run=run_serve)

    secret = commands.add_parser("secret", help="show a JTE event's webhook secret(s)")
    secret.add_argument("event", nargs="?", default=DEFAULT_SLUG, help="JTE event slug")
    secret.set_defaults(run=run_secret)


def run_serve(settings: Settings, args: argparse.Namespace) -> int:
    if args.projections is not None:
        # The app (and each worker process) reads its settings from the environment.
        if args.projections == "off":
            os.environ[env_name("projections")] = "false"
        else:
            os.environ[env_name("projections")] = "true"
            os.environ[env_name("projection_runner")] = args.projections
    if args.log_format is not None:
        # The runner's child process logs as the server does (it reads the environment).
        os.environ[env_name("log_format")] = args.log_format
    # Secrets are generated here, once, before any worker process starts.
    ensure_secrets(settings)
    # uvicorn re-raises the signal that stopped it; make SIGTERM an exception (as SIGINT is)
    # so that the embedded server below is stopped cleanly either way.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    if args.workers > 1:
        _metrics_directory(settings.data_dir)
    embedded = None
    if settings.database_url is None:
        embedded = EmbeddedPostgres(settings.data_dir)
    try:
        if embedded is not None:
            # The embedded server is set up for two roles each time; serve as the runtime one.
            setup = set_up(embedded.start(), passwordless=True)
            # The app (and each worker process) reads it from the environment.
            os.environ[env_name("database_url")] = setup.runtime_url
        else:
            _check_serving_role(settings.database_url)
        uvicorn.run(
            "service.http.app:create_app",
            factory=True,
            host=args.host or settings.host,
            port=args.port or settings.port,
            workers=args.workers,
            lifespan="on",
            log_config=logging_config(args.log_level, args.log_format or settings.log_format),
            access_log=args.access_log,
            timeout_keep_alive=settings.keep_alive,
            # Headers have a deadline too (slow-drip clients), and requests a ceiling: beyond
            # it, idle connections are closed and new requests answered 503
            # (service/http/server.py).
            http="service.http.server:GuardedHttpToolsProtocol",
            limit_concurrency=settings.max_connections,
        )
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _metrics_directory(data_dir: Path) -> None:
    """Give this run's workers a fresh directory to share their metrics in (service/metrics.py):
    `<data dir>/metrics/<this process's id>`. Directories of runs no longer alive go first, so
    counts never carry over from one run to the next; a replica running beside (same data
    directory, another process) keeps its own."""
    root = data_dir / "metrics"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.name.isdigit() and (int(old.name) == os.getpid() or not _alive(int(old.name))):
            shutil.rmtree(old, ignore_errors=True)
    run = root / str(os.getpid())
    run.mkdir()
    # Read by prometheus_client in each worker, which imports it after this is set.
    os.environ[MULTIPROC_ENV] = str(run)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_serving_role(database_url: str | None) -> None:
    """Before serving: the database answers (waiting a while for one that is starting), the
    role is its runtime role if it has one, and a role that owns the event store is told so."""
    from service.http.app import STARTUP_TIMEOUT  # here: other commands need not load the app

    assert database_url is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            conn = connect(database_url, autocommit=True, connect_timeout=5)
            break
        except Unusable:
            if time.monotonic() > deadline:
                raise
            log.warning("database %s not reachable yet; retrying", redacted(database_url))
            time.sleep(1)
    with conn:
        require_store(conn, creatable=True)
        check_runtime(conn, "serve")
        if owns_event_store(conn):
            log.warning(
                "serving as %s, who could switch off the event store's append-only triggers: "
                "run `rollcall db setup` and serve as its runtime role (see README)",
                conn.info.user,
            )


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run_secret(settings: Settings, args: argparse.Namespace) -> int:
    event = ensure_secrets(settings).event(args.event)
    if event is None:
        print(f"rollcall: no JTE event {args.event!r} is configured", file=sys.stderr)
        return 1
    for value in event.secrets:
        print(value)
    return 0
