"""`rollcall deliveries` (the delivery log, or one delivery) and `rollcall doctor` (what the
refusals say JTE sends): results on stdout, as text or `--json`."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from uuid import UUID

import msgspec
import psycopg

from domain.interpret import parse_time
from service import deliveries, doctor, grafana, intake_log
from service.cli import Commands
from service.cli.database import database
from service.config import (
    DEFAULT_SLUG,
    ConfigError,
    EventConfig,
    Settings,
    Tuning,
    env_name,
    load_settings,
)
from service.deliveries import OUTCOMES, Filters, LogItem


def add_commands(commands: Commands) -> None:
    """Register deliveries and doctor."""
    log = commands.add_parser(
        "deliveries",
        help="the delivery log: stored deliveries, duplicates and refusals, newest first",
        description="The delivery log, newest first; with KEY, one stored delivery in full.",
    )
    log.add_argument("key", nargs="?", help="a stored delivery's key: show it in full")
    log.add_argument("--event", help="only this JTE event's (`other`: paths naming none)")
    log.add_argument("--outcome", choices=OUTCOMES, help="only this outcome (default: all)")
    log.add_argument("--from", dest="since", metavar="TIME", help="received at or after (ISO)")
    log.add_argument("--to", dest="until", metavar="TIME", help="received before (ISO 8601)")
    log.add_argument("--attendee", help="only deliveries about this attendee id")
    log.add_argument("--limit", type=int, default=50, help="how many (default: %(default)s)")
    log.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    log.set_defaults(run=run_deliveries)

    diagnose = commands.add_parser(
        "doctor",
        help="say what recent refusals show JTE sends, and which configuration would accept it",
    )
    diagnose.add_argument(
        "--hours", type=float, default=24.0, help="how far back to look (default: %(default)s)"
    )
    diagnose.add_argument("--json", action="store_true", help="print JSON (default: prose)")
    diagnose.set_defaults(run=run_doctor)


def add_grafana(commands: Commands) -> None:
    """Register grafana."""
    command = commands.add_parser(
        "grafana",
        help="print a Grafana dashboard (JSON) on rollcall's metrics, for Import dashboard",
    )
    command.set_defaults(run=run_grafana, settings_free=True)


def run_grafana(args: argparse.Namespace) -> int:
    print(json.dumps(grafana.dashboard(), indent=2))
    return 0


def add_config(commands: Commands) -> None:
    """Register config check."""
    config = commands.add_parser("config", help="the configuration file")
    actions = config.add_subparsers(required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="validate a TOML configuration file before deploying it",
        description="Read FILE as ROLLCALL_CONFIG would be read (the environment's own "
        "ROLLCALL_* settings are not applied), and print the JTE events and limits it sets. "
        "Secrets are never printed, only how many each event has.",
    )
    check.add_argument("file", help="the TOML file")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(run=run_config_check, settings_free=True)


class EventSummary(msgspec.Struct, frozen=True, kw_only=True):
    slug: str
    path: str
    mode: str
    secrets: int  # 0: one is generated at first start (shown by `rollcall secret`)
    headers: dict[str, str]


class ConfigSummary(msgspec.Struct, frozen=True, kw_only=True):
    file: str
    events: list[EventSummary]
    intake: dict[str, object]  # the limits the file sets (others are defaults)


def run_config_check(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        print(f"rollcall: {args.file}: no such file", file=sys.stderr)
        return 1
    try:
        settings = load_settings({env_name("config"): str(path)})
    except ConfigError as error:
        print(f"rollcall: {args.file}: {error}", file=sys.stderr)
        return 1
    defaults = Tuning()
    intake = {
        name: getattr(settings, name)
        for name in Tuning.__struct_fields__
        if getattr(settings, name) != getattr(defaults, name)
    }
    summary = ConfigSummary(
        file=str(path),
        events=[_event_summary(event) for event in settings.events.values()],
        intake=intake,
    )
    if args.json:
        print(msgspec.json.encode(summary).decode())
        return 0
    print(f"{args.file}: valid, {len(summary.events)} JTE event(s)")
    for event in summary.events:
        secrets = f"{event.secrets} secret(s)" if event.secrets else "no secret: one is generated"
        headers = ", ".join(f"{k} {v}" for k, v in event.headers.items())
        print(f"  {event.path:32} mode {event.mode:18} {secrets}; {headers}")
    for name, value in intake.items():
        print(f"  [intake] {name} = {value}")
    return 0


def _event_summary(event: EventConfig) -> EventSummary:
    path = "/webhooks/jte" if event.slug == DEFAULT_SLUG else f"/webhooks/jte/{event.slug}"
    headers = {}
    if event.mode in ("token", "default"):
        headers["token_header"] = event.token_header
    if event.mode in ("hmac-sha256", "default"):
        headers["signature_header"] = event.signature_header
        if event.timestamp_header:
            headers["timestamp_header"] = event.timestamp_header
    if event.delivery_id_header:
        headers["delivery_id_header"] = event.delivery_id_header
    return EventSummary(
        slug=event.slug, path=path, mode=event.mode, secrets=len(event.secrets), headers=headers
    )


def run_deliveries(settings: Settings, args: argparse.Namespace) -> int:
    if args.key is not None:
        return _show(settings, args)
    if not 1 <= args.limit <= 10_000:
        print("rollcall: --limit must be from 1 to 10000", file=sys.stderr)
        return 2
    filters = Filters(
        event=args.event,
        outcome=args.outcome,
        since=_time(args.since, "--from"),
        until=_time(args.until, "--to"),
        attendee=args.attendee,
    )
    with database(settings, "deliveries") as url, psycopg.connect(url) as conn:
        items, _, scanned = deliveries.page(conn, filters, args.limit, None)
    if args.json:
        print(msgspec.json.encode(items).decode())
    else:
        print(_table(items))
        if scanned >= deliveries.SCAN_ROWS:
            print(
                f"(read the newest {scanned:,} stored deliveries; narrow --from/--to for older)",
                file=sys.stderr,
            )
    return 0


def _show(settings: Settings, args: argparse.Namespace) -> int:
    try:
        key = UUID(args.key)
    except ValueError:
        print(f"rollcall: {args.key[:64]!r} is not a delivery key", file=sys.stderr)
        return 2
    with database(settings, "deliveries") as url, psycopg.connect(url) as conn:
        found = deliveries.detail(conn, key)
    if found is None:
        print(f"rollcall: no stored delivery has key {key}", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.encode(found).decode())
        return 0
    fields = msgspec.structs.asdict(found)
    for name in ("body_base64", "views", "headers", "reading_now", "body"):
        fields.pop(name)
    for name, value in fields.items():
        print(f"{name:18} {value if value is not None else '-'}")
    print("headers")
    for name, value in found.headers.items():
        print(f"  {name}: {value}")
    now = found.reading_now
    print(f"reading now        {now.unreadable or f'{now.event_type} for {now.attendee_id}'}")
    print("views              " + ", ".join(f"{v.view} {v.state}" for v in found.views))
    print("body")
    print(found.body if found.body is not None else f"(not UTF-8) base64 {found.body_base64}")
    return 0


def run_doctor(settings: Settings, args: argparse.Namespace) -> int:
    if not 0 < args.hours <= 24 * 7:
        print("rollcall: --hours must be more than 0 and at most 168", file=sys.stderr)
        return 2
    with database(settings, "doctor") as url, psycopg.connect(url) as conn:
        entries = intake_log.recent_refusals(conn, args.hours * 3600)
    diagnosis = doctor.diagnose(entries, settings.events, args.hours)
    print(msgspec.json.encode(diagnosis).decode() if args.json else doctor.text(diagnosis))
    return 0


def _time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    when = parse_time(text)
    if when is None:
        print(f"rollcall: {option} {text[:64]!r} is not an ISO 8601 time", file=sys.stderr)
        raise SystemExit(2)  # a usage error
    return when


def _table(items: list[LogItem]) -> str:
    lines = [f"{'received (UTC)':19}  {'event':12} {'outcome':11} {'st':>3}  what"]
    for item in items:
        if item.key is not None and item.outcome != "duplicate":
            what = f"{item.event_type or '-'} {item.attendee_id or ''}  key {item.key}"
        else:
            what = f"{item.path or ''} headers: {', '.join(item.headers)[:80]}"
        if item.reason:
            what = f"{item.reason}: {what}"
        lines.append(
            f"{item.received_at:%Y-%m-%d %H:%M:%S}  {item.event[:12]:12} {item.outcome:11} "
            f"{item.status:>3}  {what}"
        )
    return "\n".join(lines)
