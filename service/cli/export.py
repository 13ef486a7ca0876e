"""`rollcall export --sqlite FILE --event SLUG...`: the `analytics` views of chosen JTE events
into a SQLite file that Datasette, pandas or any SQLite client opens directly.

Each analytics view becomes a table of the same name holding the chosen events' rows (every
view has `event` first). Amounts are NUMERIC (exact text in, SQLite's number out), times ISO
8601 UTC text (`2026-05-14T09:12:03Z`), booleans 0/1, `fields` JSON text (SQLite's json_extract
reads it). The file is written anew (a temporary file renamed into place), so it is never seen
half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql

from projections.schema import ANALYTICS
from service.cli import Commands
from service.config import Settings

_TYPES: Final = {
    "integer": "INTEGER", "bigint": "INTEGER", "smallint": "INTEGER", "boolean": "INTEGER",
    "numeric": "NUMERIC", "double precision": "REAL", "real": "REAL",
}  # fmt: skip


def add_command(commands: Commands) -> None:
    """Register export."""
    command = commands.add_parser(
        "export",
        help="the analytics views of chosen events into a SQLite file (Datasette, pandas)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument(
        "--sqlite", type=Path, required=True, metavar="FILE", help="the SQLite file to write"
    )
    command.add_argument(
        "--event", action="append", required=True, metavar="SLUG", help="repeatable"
    )
    command.set_defaults(run=run_export)


def run_export(settings: Settings, args: argparse.Namespace) -> int:
    unknown = [slug for slug in args.event if settings.event(slug) is None]
    if unknown:
        print(f"rollcall: no JTE event {unknown[0][:64]!r} is configured", file=sys.stderr)
        return 1
    if settings.database_url is None:
        print("rollcall: export needs DATABASE_URL", file=sys.stderr)
        return 1
    started = time.monotonic()
    counts = export_sqlite(settings.database_url, args.event, args.sqlite)
    rows = sum(counts.values())
    print(
        f"wrote {args.sqlite}: {len(counts)} tables, {rows:,} rows "
        f"({', '.join(args.event)}) in {time.monotonic() - started:.1f} s"
    )
    return 0


def export_sqlite(database_url: str, slugs: list[str], target: Path) -> dict[str, int]:
    """Write the views' rows of `slugs` into a new SQLite file; rows per table."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    with psycopg.connect(database_url) as source, sqlite3.connect(partial) as out:
        views = source.execute(
            "SELECT table_name FROM information_schema.views WHERE table_schema = %s "
            "ORDER BY table_name",
            (ANALYTICS,),
        ).fetchall()
        for (view,) in views:
            columns = source.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                (ANALYTICS, view),
            ).fetchall()
            names = [name for name, _ in columns]
            if "event" not in names:
                continue
            out.execute(
                f"CREATE TABLE {_quote(view)} ("
                + ", ".join(f"{_quote(n)} {_TYPES.get(t, 'TEXT')}" for n, t in columns)
                + ")"
            )
            cursor = source.cursor(name=f"export_{view}")  # server-side: constant memory
            cursor.execute(
                sql.SQL("SELECT * FROM {} WHERE event = ANY(%s)").format(
                    sql.Identifier(ANALYTICS, view)
                ),
                (slugs,),
            )
            insert = f"INSERT INTO {_quote(view)} VALUES ({', '.join('?' for _ in names)})"
            counts[view] = 0
            while batch := cursor.fetchmany(5000):
                out.executemany(insert, [[_value(v) for v in row] for row in batch])
                counts[view] += len(batch)
            cursor.close()
        out.commit()
    partial.replace(target)
    return counts


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value
