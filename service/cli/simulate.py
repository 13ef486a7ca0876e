"""`rollcall simulate`: a realistic JTE event day, signed for a configured event, POSTed like
JTE or written as JSON lines."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import date

import msgspec

from service.cli import Commands
from service.cli.progress import ProgressBar
from service.config import DEFAULT_SLUG, Settings, ensure_secrets
from service.jte.sender import post_all, summary
from service.jte.simulator import SimulationOptions, sign_all, simulate, write_jsonl


def add_command(commands: Commands) -> None:
    """Register simulate."""
    defaults = SimulationOptions()
    command = commands.add_parser(
        "simulate",
        help="realistic, deterministic JTE traffic, signed: POST it or write JSON lines",
        description="Simulate a JTE event day (the same options give the same deliveries), "
        "signed for a configured JTE event. Against a store that already holds a run, use "
        "another --seed: the same seed gives the same delivery ids, so they are duplicates.",
    )
    command.add_argument(
        "--seed", type=int, default=defaults.seed, help="the same seed gives the same deliveries"
    )
    command.add_argument(
        "--attendees", type=_positive, default=defaults.attendees, help="attendees in the day"
    )
    command.add_argument(
        "--day", type=date.fromisoformat, default=defaults.day, help="YYYY-MM-DD (UTC)"
    )
    for name, what in (
        ("duplicates", "deliveries sent twice"),
        ("out-of-order", "deliveries arriving late"),
        ("bad-signatures", "extra forged deliveries"),
        ("malformed", "extra unreadable deliveries"),
    ):
        command.add_argument(f"--{name}", type=_share, default=0.0, help=f"share of {what}")
    command.add_argument("--event", default=DEFAULT_SLUG, help="JTE event slug to sign for")
    target = command.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="rollcall's base URL, e.g. http://127.0.0.1:8000")
    target.add_argument("--output", metavar="FILE.jsonl", help="write JSON lines ('-': stdout)")
    command.add_argument("--concurrency", type=_positive, default=8, help="parallel senders")
    command.add_argument("--no-retry", action="store_true", help="do not retry like JTE does")
    command.add_argument("--json", action="store_true", help="print the report as JSON")
    command.set_defaults(run=run_simulate)


def run_simulate(settings: Settings, args: argparse.Namespace) -> int:
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
    progress = ProgressBar("deliveries")
    try:
        report = asyncio.run(
            post_all(
                args.url,
                signed,
                concurrency=args.concurrency,
                retry=not args.no_retry,
                # Retry like JTE, but do not wait forever on a URL where nothing answers.
                give_up_after=60,
                on_progress=progress,
            )
        )
    except ValueError as error:  # a URL that is not http(s)
        print(f"rollcall: {error}", file=sys.stderr)
        return 2
    finally:
        progress.finish()
    print(msgspec.json.encode(report).decode() if args.json else summary(report))
    return 1 if report.unexpected else 0


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
