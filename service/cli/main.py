"""The `rollcall` command line: serve, secret, simulate, and the operator commands."""

from __future__ import annotations

import argparse
import logging
import logging.config
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import psycopg

from service.cli import (
    access,
    asof,
    database,
    export,
    importing,
    operator,
    privacy,
    serve,
    simulate,
    views,
)
from service.config import ConfigError, env_name, load_settings
from service.eventstore.database import Unusable, reason
from service.eventstore.store import StoreUnavailable
from service.http.logs import logging_config

log = logging.getLogger("rollcall")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rollcall` console script."""
    args = _parser().parse_args(argv)
    if getattr(args, "settings_free", False):  # it reads its own file: `config check`
        code: int = args.run(args)
        return code
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


class _HelpFormatter(argparse.HelpFormatter):
    """Help that gives each option's default after its meaning (unless it says it already)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "default" in text.lower() or default in (None, False, argparse.SUPPRESS):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Every command's parser: the same help format."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rollcall",
        description=__doc__,
        epilog="Results go to stdout (text, or JSON with --json); progress, warnings and errors "
        "to stderr. Exit 0: done; 1: failed (a database down or empty says so in one line); "
        "2: a usage or configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"rollcall {_version()}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much to log on stderr",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        help=f"text lines, or JSON lines (also {env_name('log_format')})",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND", parser_class=_Parser)
    serve.add_commands(commands)  # serve, secret
    simulate.add_command(commands)
    views.add_commands(commands)  # project, rebuild, status
    asof.add_commands(commands)  # as-of list, as-of drop
    database.add_replay(commands)
    access.add_commands(commands)  # token, grant-analyst
    database.add_setup(commands)  # db setup
    privacy.add_commands(commands)  # erase, subject
    operator.add_commands(commands)  # deliveries, doctor
    operator.add_config(commands)  # config check
    operator.add_grafana(commands)  # grafana
    importing.add_command(commands)  # import
    export.add_command(commands)  # export --sqlite
    return parser


def _version() -> str:
    try:
        return metadata.version("rollcall")
    except metadata.PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
