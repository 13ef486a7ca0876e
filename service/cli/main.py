"""The `rollcall` command line: serve, secret, simulate, and the operator commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import date
from types import FrameType

import psycopg
import uvicorn

from service.cli.operate import add_commands, require_store
from service.config import DEFAULT_SLUG, ConfigError, Settings, ensure_secrets, load_settings
from service.eventstore.database import EmbeddedPostgres, Unusable, connect, reason, redacted
from service.eventstore.roles import check_runtime, owns_event_store, set_up
from service.eventstore.store import StoreUnavailable
from service.http.logs import logging_config
from service.jte.sender import post_all, summary
from service.jte.simulator import SimulationOptions, sign_all, simulate, write_jsonl

log = logging.getLogger("rollcall")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rollcall` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.config.dictConfig(logging_config(args.log_level, args.log_format))
    try:
        settings = load_settings()
        result: int = args.run(settings, args)
    except ConfigError as error:
        print(f"rollcall: configuration error: {error}", file=sys.stderr)
        return 2
    except (Unusable, StoreUnavailable, psycopg.Error) as error:
        # A database that is empty, unreachable or not rollcall's: one line, no traceback.
        log.debug("the command failed", exc_info=True)
        message = str(error) if isinstance(error, Unusable) else reason(error)
        print(f"rollcall: {message}", file=sys.stderr)
        return 1
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rollcall", description=__doc__)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("ROLLCALL_LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="text lines, or JSON lines (also ROLLCALL_LOG_FORMAT)",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the service (embedded PostgreSQL unless DATABASE_URL)"
    )
    serve.add_argument("--host", default=os.environ.get("ROLLCALL_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("ROLLCALL_PORT", "8000")))
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--access-log", action="store_true", help="log every request line")
    serve.set_defaults(run=_serve)

    secret = commands.add_parser("secret", help="show a JTE event's webhook secret(s)")
    secret.add_argument("event", nargs="?", default=DEFAULT_SLUG, help="JTE event slug")
    secret.set_defaults(run=_secret)

    _simulate_parser(commands)
    add_commands(commands)

    return parser


def _simulate_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    defaults = SimulationOptions()
    simulate = commands.add_parser(
        "simulate",
        help="realistic, deterministic JTE traffic, signed: POST it or write JSON lines",
        description="Simulate a JTE event day (the same options give the same deliveries), "
        "signed for a configured JTE event. Against a store that already holds a run, use "
        "another --seed: the same seed gives the same delivery ids, so they are duplicates.",
    )
    simulate.add_argument("--seed", type=int, default=defaults.seed)
    simulate.add_argument("--attendees", type=_positive, default=defaults.attendees)
    simulate.add_argument(
        "--day", type=date.fromisoformat, default=defaults.day, help="YYYY-MM-DD (UTC)"
    )
    for name, what in (
        ("duplicates", "deliveries sent twice"),
        ("out-of-order", "deliveries arriving late"),
        ("bad-signatures", "extra forged deliveries"),
        ("malformed", "extra unreadable deliveries"),
    ):
        simulate.add_argument(f"--{name}", type=_share, default=0.0, help=f"share of {what}")
    simulate.add_argument("--event", default=DEFAULT_SLUG, help="JTE event slug to sign for")
    target = simulate.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="rollcall's base URL, e.g. http://127.0.0.1:8000")
    target.add_argument("--output", metavar="FILE.jsonl", help="write JSON lines ('-': stdout)")
    simulate.add_argument("--concurrency", type=_positive, default=8, help="parallel senders")
    simulate.add_argument("--no-retry", action="store_true", help="do not retry like JTE does")
    simulate.set_defaults(run=_simulate)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be a share between 0 and 1")
    return value


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    # Secrets are generated here, once, before any worker process starts.
    ensure_secrets(settings)
    # uvicorn re-raises the signal that stopped it; make SIGTERM an exception (as SIGINT is)
    # so that the embedded server below is stopped cleanly either way.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    embedded = None
    if settings.database_url is None:
        embedded = EmbeddedPostgres(settings.data_dir)
    try:
        if embedded is not None:
            # The embedded server is set up for two roles each time; serve as the runtime one.
            setup = set_up(embedded.start(), passwordless=True)
            os.environ["DATABASE_URL"] = setup.runtime_url
        else:
            _check_serving_role(settings.database_url)
        uvicorn.run(
            "service.http.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            lifespan="on",
            log_config=logging_config(args.log_level, args.log_format),
            access_log=args.access_log,
            timeout_keep_alive=5,
            # Headers have a deadline too (slow-drip clients), and requests a ceiling: beyond
            # it, idle connections are closed and new requests answered 503 (service/protocol.py).
            http="service.http.server:GuardedHttpToolsProtocol",
            limit_concurrency=settings.max_connections,
        )
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


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


def _secret(settings: Settings, args: argparse.Namespace) -> int:
    event = ensure_secrets(settings).event(args.event)
    if event is None:
        print(f"rollcall: no JTE event {args.event!r} is configured", file=sys.stderr)
        return 1
    for value in event.secrets:
        print(value)
    return 0


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    event = ensure_secrets(settings).event(args.event)
    if event is None:
        print(f"rollcall: no JTE event {args.event!r} is configured", file=sys.stderr)
        return 1
    options = SimulationOptions(
        seed=args.seed,
        attendees=args.attendees,
        day=args.day,
        duplicates=args.duplicates,
        out_of_order=args.out_of_order,
        bad_signatures=args.bad_signatures,
        malformed=args.malformed,
    )
    signed = sign_all(simulate(options), event, now=time.time())
    if args.output is not None:
        write_jsonl(sys.stdout if args.output == "-" else args.output, signed)
        # With "-", stdout holds only the JSON lines.
        out = sys.stderr if args.output == "-" else sys.stdout
        print(f"wrote {len(signed)} deliveries for JTE event {event.slug!r}", file=out)
        return 0
    try:
        report = asyncio.run(
            post_all(
                args.url,
                signed,
                concurrency=args.concurrency,
                retry=not args.no_retry,
                # Retry like JTE, but do not wait forever on a URL where nothing answers.
                give_up_after=60,
            )
        )
    except ValueError as error:  # a URL that is not http(s)
        print(f"rollcall: {error}", file=sys.stderr)
        return 2
    print(summary(report))
    return 1 if report.unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
