"""`rollcall import FILE`: attendees JTE already holds, brought in as deliveries marked imported.

A CSV or Excel (.xlsx) attendee list becomes one AttendeeImported delivery per row; a JSON
lines file (.jsonl, .ndjson) holds webhook bodies as JTE sends them, one per line. Each is
stored like a webhook, but with `verified_by` "import" and the operator, file name and row in
its kept headers (`x-rollcall-import-*`): nothing a signed webhook can carry, so an imported
delivery is never taken for one.

Dedupe keys (so re-running an import adds nothing, and JTE's later webhooks do not double
anything):
- a JSON line: the key intake gives the same body (JTE's delivery id, else the body's SHA-256),
  so when JTE later sends that very delivery it is answered as a duplicate;
- a list row: from the event, the attendee id and the row's mapped fields; its occurrence time
  (`--occurred-at`, default the file's modification time: when the list was exported) is left
  out, so the same row imported again is the same delivery. JTE's later webhooks about the
  attendee are deliveries of their own, folded into the same roster row (attendee id): a row
  imported at the list's time and the webhooks give the views the webhooks alone give whenever
  the row holds what JTE held then.

Columns: `--map FIELD=COLUMN` (repeatable) or `--mapping FILE` (JSON object, field to column),
as JTE's importer maps its form fields (`firstName`, `email`, ...) to columns; a column is a
letter (A, B, ... as in JTE) or a header name. Without a mapping every header becomes the
field of its name, with the usual names of JTE's keys recognised (`E-mail` is `email`,
`Imię` is `firstName`, ...). The attendee id (`id`) is required: it is what JTE's webhooks
carry, and what the views key attendees by.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from uuid import UUID, uuid5

import psycopg

from domain.interpret import Interpreted, interpret, parse_time
from service.cli import Commands
from service.config import DEFAULT_SLUG, EventConfig, Settings
from service.eventstore.store import EVENTS_TABLE, DeliveryRecorded, DeliveryStore
from service.http.intake import delivery_record

_NAMESPACE: Final = UUID("0d8c4f5e-4c1b-5b7e-9a55-3f4f1f9f8a16")
BATCH: Final = 1000
VERIFIED_BY: Final = "import"
# Header names (lowercased, without spaces, dashes and underscores) that name JTE's keys.
ALIASES: Final = {
    "id": "id", "attendeeid": "id", "jteid": "id",
    "email": "email", "emailaddress": "email", "adresemail": "email",
    "firstname": "firstName", "imie": "firstName", "imię": "firstName", "name": "firstName",
    "lastname": "lastName", "surname": "lastName", "nazwisko": "lastName",
    "role": "role", "rola": "role", "ticket": "ticket", "bilet": "ticket",
    "company": "company", "firma": "company", "addedbyadmin": "addedByAdmin",
}  # fmt: skip
_LETTERS: Final = re.compile(r"^[A-Z]{1,3}$")


class ImportFailed(Exception):
    """The file or the mapping cannot be imported; the message says why."""


def add_command(commands: Commands) -> None:
    """Register import."""
    command = commands.add_parser(
        "import",
        help="bring in attendees JTE already holds (CSV/XLSX list or JSON lines of webhooks)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("file", type=Path, help="a .csv, .xlsx, .jsonl or .ndjson file")
    command.add_argument("--event", default=DEFAULT_SLUG, help="the JTE event's slug")
    command.add_argument(
        "--map", action="append", default=[], metavar="FIELD=COLUMN",
        help="a form field and its column (letter or header name); repeatable",
    )  # fmt: skip
    command.add_argument("--mapping", type=Path, help="a JSON object of field: column")
    command.add_argument("--no-header", action="store_true", help="the list has no header row")
    command.add_argument("--delimiter", default=None, help="CSV separator (default: sniffed)")
    command.add_argument(
        "--occurred-at", help="when the list's state held (default: the file's modified time)"
    )
    command.add_argument(
        "--operator", default=None, help="who runs the import (default: the login name)"
    )
    command.add_argument("--dry-run", action="store_true", help="print what would be added")
    command.set_defaults(run=run_import)


def run_import(settings: Settings, args: argparse.Namespace) -> int:
    event = settings.event(args.event)
    if event is None:
        print(f"rollcall: no JTE event {args.event!r} is configured", file=sys.stderr)
        return 1
    if settings.database_url is None:
        print("rollcall: import needs DATABASE_URL", file=sys.stderr)
        return 1
    operator = args.operator or _login()
    started = time.monotonic()
    try:
        mapping = _mapping(args)
        records = list(read_records(event, args.file, mapping, args, operator))
    except ImportFailed as error:
        print(f"rollcall: {error}", file=sys.stderr)
        return 1
    if args.dry_run:
        new = _not_stored(settings.database_url, records)
        for record in new[:20]:
            print(f"would add: {record.event_type} attendee {record.attendee_id!r}")
        if len(new) > 20:
            print(f"… and {len(new) - 20} more")
        print(f"dry run: {len(new)} of {len(records)} rows would be added "
              f"({len(records) - len(new)} already stored); nothing written")  # fmt: skip
        return 0
    store = DeliveryStore(settings.database_url)
    added = 0
    try:
        for start in range(0, len(records), BATCH):
            positions = store.append(records[start : start + BATCH])
            added += sum(p is not None for p in positions)
    finally:
        store.close()
    seconds = time.monotonic() - started
    rate = len(records) / seconds if seconds > 0 else float("inf")
    print(
        f"imported {args.file.name}: {added} of {len(records)} rows added "
        f"({len(records) - added} already stored) in {seconds:.1f} s, {rate:,.0f} rows/s"
    )
    return 0


def read_records(
    event: EventConfig, path: Path, mapping: dict[str, str], args: Any, operator: str
) -> Iterator[DeliveryRecorded]:
    """The deliveries a file holds, marked imported."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ImportFailed(f"{path} is not a file")
    marks = {"x-rollcall-import-operator": operator, "x-rollcall-import-file": path.name}
    if suffix in (".jsonl", ".ndjson"):
        yield from _json_lines(event, path, marks)
        return
    if suffix == ".csv":
        rows = _csv_rows(path, args.delimiter)
    elif suffix == ".xlsx":
        rows = _xlsx_rows(path)
    else:
        raise ImportFailed(f"{path.name}: import reads .csv, .xlsx, .jsonl or .ndjson files")
    when = _occurred_at(path, args.occurred_at)
    yield from list_records(event, rows, mapping, not args.no_header, when, marks)


def list_records(
    event: EventConfig,
    rows: list[list[str]],
    mapping: dict[str, str],
    header: bool,
    when: datetime,
    marks: dict[str, str],
) -> Iterator[DeliveryRecorded]:
    """One AttendeeImported delivery per row of an attendee list."""
    if not rows:
        return
    names = rows[0] if header else []
    columns = _columns(mapping, names)
    if "id" not in columns:
        raise ImportFailed(
            "no attendee id column: map one with --map id=COLUMN (JTE's attendee id, which its "
            "webhooks carry)"
        )
    stamp = when.astimezone(UTC).isoformat().replace("+00:00", "Z")
    for number, row in enumerate(rows[1:] if header else rows, start=2 if header else 1):
        attendee = {
            field: row[index].strip()
            for field, index in columns.items()
            if index < len(row) and row[index].strip() != ""
        }
        if not attendee.get("id"):
            raise ImportFailed(f"row {number}: no attendee id")
        canonical = json.dumps(attendee, sort_keys=True, ensure_ascii=False)
        key = uuid5(
            _NAMESPACE, f"{event.slug}\nlist\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        body = json.dumps(
            {"event": "AttendeeImported", "occurredAt": stamp, "attendee": attendee},
            ensure_ascii=False,
        ).encode()
        yield _marked(event, body, key, {**marks, "x-rollcall-import-row": str(number)})


def _json_lines(
    event: EventConfig, path: Path, marks: dict[str, str]
) -> Iterator[DeliveryRecorded]:
    with path.open("rb") as stream:
        for number, line in enumerate(stream, start=1):
            body = line.strip()
            if not body:
                continue
            if not isinstance(interpret(body), Interpreted):
                raise ImportFailed(f"line {number}: not a JTE webhook body rollcall can read")
            record = delivery_record(event, {}, body, VERIFIED_BY)
            yield _marked(event, body, record.originator_id,
                          {**marks, "x-rollcall-import-row": str(number)})  # fmt: skip


def _marked(event: EventConfig, body: bytes, key: UUID, marks: dict[str, str]) -> DeliveryRecorded:
    record = delivery_record(event, {}, body, VERIFIED_BY)
    return dataclasses.replace(record, originator_id=key, headers=marks)


def _columns(mapping: dict[str, str], names: list[str]) -> dict[str, int]:
    """Field -> column index."""
    if not mapping:
        if not names:
            raise ImportFailed("a list without a header row needs --map or --mapping")
        columns: dict[str, int] = {}
        for index, name in enumerate(names):
            plain = re.sub(r"[\s_\-]", "", name.strip().lower())
            field = ALIASES.get(plain, name.strip())
            if field and field not in columns:
                columns[field] = index
        return columns
    found = {}
    for field, column in mapping.items():
        if _LETTERS.match(column):
            index = 0
            for letter in column:
                index = index * 26 + ord(letter) - ord("A") + 1
            found[field] = index - 1
        elif column in names:
            found[field] = names.index(column)
        else:
            raise ImportFailed(f"column {column[:64]!r} (for {field[:64]!r}) is not in the header")
    return found


def _mapping(args: Any) -> dict[str, str]:
    mapping: dict[str, str] = {}
    if args.mapping is not None:
        try:
            loaded = json.loads(args.mapping.read_text())
        except (OSError, ValueError) as error:
            raise ImportFailed(f"cannot read the mapping {args.mapping}: {error}") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
            raise ImportFailed("the mapping file must be a JSON object of field: column")
        mapping.update(loaded)
    for item in args.map:
        field, sep, column = item.partition("=")
        if not sep or not field or not column:
            raise ImportFailed(f"--map {item[:64]!r}: give FIELD=COLUMN")
        mapping[field.strip()] = column.strip()
    return mapping


def _csv_rows(path: Path, delimiter: str | None) -> list[list[str]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")  # Excel's BOM, if any
    except UnicodeDecodeError:
        raise ImportFailed(f"{path.name} is not UTF-8 text") from None
    if delimiter is None:
        first = text.split("\n", 1)[0]
        delimiter = ";" if first.count(";") > first.count(",") else ","
    return [row for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if row]


def _xlsx_rows(path: Path) -> list[list[str]]:
    from openpyxl import load_workbook  # only import needs it at the command line

    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except Exception as error:  # openpyxl raises many kinds for a file that is not a workbook
        raise ImportFailed(
            f"{path.name} is not an Excel workbook: {type(error).__name__}"
        ) from None
    sheet = book.worksheets[0]
    rows = [["" if v is None else str(v) for v in row] for row in sheet.iter_rows(values_only=True)]
    book.close()
    return [row for row in rows if any(row)]


def _occurred_at(path: Path, given: str | None) -> datetime:
    if given is None:
        return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
    when = parse_time(given)
    if when is None:
        raise ImportFailed(f"--occurred-at {given[:64]!r} is not an ISO 8601 time")
    return when


def _not_stored(database_url: str, records: list[DeliveryRecorded]) -> list[DeliveryRecorded]:
    """The records whose keys the store does not hold yet (and first of their key here)."""
    with psycopg.connect(database_url) as conn:
        try:
            stored = {
                row[0]
                for row in conn.execute(
                    f"SELECT originator_id FROM rollcall.{EVENTS_TABLE} "
                    "WHERE originator_id = ANY(%s)",
                    ([r.originator_id for r in records],),
                )
            }
        except psycopg.errors.UndefinedTable:
            stored = set()  # no store yet: nothing is stored
    seen: set[UUID] = set()
    new = []
    for record in records:
        if record.originator_id not in stored and record.originator_id not in seen:
            seen.add(record.originator_id)
            new.append(record)
    return new


def _login() -> str:
    try:
        return os.getlogin()
    except OSError:
        return os.environ.get("USER") or "unknown"
