"""`rollcall as-of list|drop`: the schemas `rebuild --as-of` made, and removing one."""

from __future__ import annotations

import argparse
import sys

import msgspec
import psycopg

from domain.interpret import parse_time
from projections.rebuild import as_of_builds, as_of_schema, drop_as_of
from service.cli import Commands
from service.cli.database import database
from service.config import Settings


def add_commands(commands: Commands) -> None:
    """Register as-of list and as-of drop."""
    as_of = commands.add_parser("as-of", help="list or drop the schemas made by rebuild --as-of")
    actions = as_of.add_subparsers(dest="action", required=True, metavar="list|drop")
    listing = actions.add_parser("list", help="every as-of schema: its instant and views")
    listing.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    listing.set_defaults(run=run_list)
    drop = actions.add_parser("drop", help="drop an as-of schema and its tables")
    drop.add_argument("which", metavar="SCHEMA|TIME", help="its schema name, or the instant")
    drop.add_argument("--json", action="store_true", help="print JSON (default: a line)")
    drop.set_defaults(run=run_drop)


def run_list(settings: Settings, args: argparse.Namespace) -> int:
    with database(settings, "as-of list") as url, psycopg.connect(url) as conn:
        builds = as_of_builds(conn)
    if args.json:
        print(msgspec.json.encode(builds).decode())
        return 0
    for build in builds:
        print(f"{build.schema}  {build.as_of.isoformat()}  {', '.join(build.views)}")
    return 0


def run_drop(settings: Settings, args: argparse.Namespace) -> int:
    schema = args.which
    if not schema.startswith("analytics_as_of_"):
        when = parse_time(schema)
        if when is None:
            raise SystemExit(f"rollcall: {schema[:64]!r} is neither an as-of schema nor a time")
        schema = as_of_schema(when)
    with database(settings, "as-of drop") as url:
        dropped = drop_as_of(url, schema)
    if dropped is None:
        print(f"rollcall: no as-of schema {schema!r} (see `rollcall as-of list`)", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.encode(dropped).decode())
    else:
        print(f"dropped {dropped.schema} ({', '.join(dropped.views)})")
    return 0
