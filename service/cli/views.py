"""The views from the command line: `rollcall project` (the runner alone), `rebuild` (blue/green,
or as of a past time) and `status`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from datetime import datetime
from types import FrameType

import msgspec
import psycopg

from domain.interpret import parse_time
from projections.fold import PoisonError
from projections.rebuild import BATCH, BuildBusy, Progress, build_as_of, rebuild
from projections.registry import VIEW_NAMES
from projections.runner import Runner
from projections.status import ViewStatus, read_status
from service import privacy
from service.cli import Commands
from service.cli.database import database
from service.config import Settings
from service.eventstore.source import SOURCE


def add_commands(commands: Commands) -> None:
    """Register project, rebuild and status."""
    project = commands.add_parser("project", help="run the projection runner alone (no HTTP)")
    project.set_defaults(run=run_project)

    build = commands.add_parser(
        "rebuild", help="rebuild views from the first event, then swap them in (blue/green)"
    )
    build.add_argument("view", choices=[*VIEW_NAMES, "all"], help="the view to rebuild, or all")
    build.add_argument(
        "--skip-poison", action="store_true", help="dead-letter events a view cannot apply"
    )
    build.add_argument(
        "--as-of", metavar="TIME", help="build the views as they stood then, into their own schema"
    )
    build.add_argument(
        "--batch-size", type=int, default=BATCH, help="deliveries applied per transaction"
    )
    build.add_argument("--json", action="store_true", help="print the result as JSON")
    build.set_defaults(run=run_rebuild)

    status = commands.add_parser("status", help="where each view stands")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=run_status)


def run_project(settings: Settings, args: argparse.Namespace) -> int:
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with database(settings, "project", created=False) as url:
        Runner(url, SOURCE).run(stop)
    return 0


def run_rebuild(settings: Settings, args: argparse.Namespace) -> int:
    views = list(VIEW_NAMES) if args.view == "all" else [args.view]
    as_of = _as_of(args.as_of) if args.as_of else None
    show = _ProgressBar()
    try:
        with database(settings, "rebuild") as url:
            if as_of is not None:
                schema = build_as_of(
                    url, views, SOURCE, as_of, skip_poison=args.skip_poison, on_progress=show
                )
                show.finish()
                _result(
                    args,
                    f"built {', '.join(views)} as of {as_of.isoformat()} into schema {schema}",
                    {"views": views, "as_of": as_of.isoformat(), "schema": schema},
                )
            else:
                built = rebuild(
                    url,
                    views,
                    SOURCE,
                    skip_poison=args.skip_poison,
                    on_progress=show,
                    batch_size=args.batch_size,
                )
                names = ", ".join(f"{v.view} v{v.version}" for v in built)
                show.finish()
                _result(
                    args,
                    f"rebuilt and swapped in: {names}",
                    {"rebuilt": [{"view": v.view, "version": v.version} for v in built]},
                )
    except KeyboardInterrupt:
        show.finish("interrupted: the live views are untouched; run the same command to resume")
        return 130
    except (BuildBusy, PoisonError) as error:
        show.finish(f"rollcall: {error}")
        if isinstance(error, PoisonError):
            print("rerun with --skip-poison to dead-letter such events instead", file=sys.stderr)
        return 1
    return 0


def run_status(settings: Settings, args: argparse.Namespace) -> int:
    with database(settings, "status") as url, psycopg.connect(url) as conn:
        statuses = read_status(conn, SOURCE)
        retention = privacy.retention(url, privacy.retained(settings.events))
    if args.json:
        print(msgspec.json.encode(statuses).decode())
    else:
        print(_status_table(statuses))
        for r in retention:
            when = r.erase_after.isoformat() if r.erase_after else "(no delivery yet)"
            print(
                f"personal data of {r.event}: kept {r.retain_days} days after the last delivery, "
                f"erased after {when} ({r.attendees_with_data} attendees hold some)"
            )
    return 1 if any(s.state == "failed" for s in statuses) else 0


def _result(args: argparse.Namespace, line: str, data: dict[str, object]) -> None:
    """A command's result: on stdout, as a line or (--json) JSON."""
    print(msgspec.json.encode(data).decode() if args.json else line)


def _as_of(text: str) -> datetime:
    when = parse_time(text)
    if when is None:
        raise SystemExit(f"rollcall: --as-of {text!r} is not an ISO 8601 time")
    return when


def _status_table(statuses: list[ViewStatus]) -> str:
    lines = [
        f"{'view':10} {'version':>7} {'state':10} {'position':>10} {'head':>10} "
        f"{'lag':>8} {'lag s':>8} {'dead':>6}  rebuilding / last error"
    ]
    for s in statuses:
        extra = f"v{s.rebuilding.version} at {s.rebuilding.position}" if s.rebuilding else ""
        if s.rebuilding and s.rebuilding.error:
            extra += f" stopped: {s.rebuilding.error}"
        if s.last_error:
            extra = (extra + "  " if extra else "") + s.last_error
        lines.append(
            f"{s.view:10} {s.version or '-':>7} {s.state:10} {s.position:>10} {s.head:>10} "
            f"{s.lag_events:>8} {s.lag_seconds:>8.1f} {s.dead_letters:>6}  {extra}"
        )
    return "\n".join(lines)


class _ProgressBar:
    """A one-line progress bar on stderr: share done, events/s, ETA."""

    def __init__(self) -> None:
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._last < (0.2 if self._tty else 5.0) and progress.position < progress.head:
            return
        self._last = now
        share = min(1.0, progress.done / progress.total)
        bar = "#" * int(share * 30)
        eta = f"{progress.eta:.0f}s" if progress.eta is not None else "?"
        line = (
            f"[{bar:30}] {share:4.0%} {progress.done:,}/{progress.total:,} events "
            f"{progress.rate:,.0f}/s ETA {eta}"
        )
        print(
            ("\r" if self._tty else "") + line,
            end="" if self._tty else "\n",
            file=sys.stderr,
            flush=True,
        )

    def finish(self, message: str | None = None) -> None:
        """End the bar's line; `message` (prose, an error) goes to stderr after it."""
        if self._tty:
            print(file=sys.stderr)
        if message is not None:
            print(message, file=sys.stderr)
