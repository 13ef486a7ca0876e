"""The `rollcall` command line: serve, secret."""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn

from service.config import DEFAULT_SLUG, ConfigError, Settings, ensure_secrets, load_settings
from service.database import EmbeddedPostgres
from service.logs import logging_config

log = logging.getLogger("rollcall")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rollcall` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.config.dictConfig(logging_config(args.log_level))
    try:
        settings = load_settings()
        result: int = args.run(settings, args)
    except ConfigError as error:
        print(f"rollcall: configuration error: {error}", file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rollcall", description=__doc__)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
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
    return parser


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    # Secrets are generated here, once, before any worker process starts.
    ensure_secrets(settings)
    # uvicorn re-raises the signal that stopped it; make SIGTERM an exception (as SIGINT is)
    # so that the embedded server below is stopped cleanly either way.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    embedded = None
    if settings.database_url is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        os.environ["DATABASE_URL"] = embedded.start()
    try:
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            lifespan="on",
            log_config=logging_config(args.log_level),
            access_log=args.access_log,
            timeout_keep_alive=5,
        )
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
