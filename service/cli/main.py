"""The `rollcall` command line: serve, secret, simulate, and the operator commands."""

from __future__ import annotations

import argparse
import logging
import logging.config
import sys
from collections.abc import Sequence

import psycopg

from service.cli import access, asof, database, serve, simulate, views
from service.config import ConfigError, env_name, load_settings
from service.eventstore.database import Unusable, reason
from service.eventstore.store import StoreUnavailable
from service.http.logs import logging_config

log = logging.getLogger("rollcall")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rollcall` console script."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"rollcall: configuration error: {error}", file=sys.stderr)
        return 2
    logging.config.dictConfig(
        logging_config(args.log_level, args.log_format or settings.log_format)
    )
    try:
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
        choices=["text", "json"],
        help=f"text lines, or JSON lines (also {env_name('log_format')})",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    serve.add_commands(commands)  # serve, secret
    simulate.add_command(commands)
    views.add_commands(commands)  # project, rebuild, status
    asof.add_commands(commands)  # as-of list, as-of drop
    database.add_replay(commands)
    access.add_commands(commands)  # token, grant-analyst
    database.add_setup(commands)  # db setup
    return parser


if __name__ == "__main__":
    sys.exit(main())
