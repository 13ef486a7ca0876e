"""`python -m tests.drill [SCENARIO…] [--quick] [--markdown FILE]` (scripts/drill): run the drill,
print its table, exit 1 if a promise broke."""

from __future__ import annotations

import argparse
import logging.config
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from service.eventstore import keys
from service.http.logs import logging_config
from tests.drill import FULL, QUICK, SCENARIOS, run, table


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.config.dictConfig(logging_config("info"))
    # The drill's servers and its own checks open what each other sealed: one key for the run.
    os.environ.setdefault(keys.MASTER_KEY_ENV, keys.generate_master_key())
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(
            f"drill: no scenario {', '.join(unknown)}; there are {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    # A terminated drill still stops the servers and the PostgreSQL it started (its finally).
    signal.signal(signal.SIGTERM, _interrupted)
    findings = run(names, QUICK if args.quick else FULL)
    text = table(findings)
    print("\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0 if all(f.held for f in findings) else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/drill",
        description="the reliability and security drill; exit 1 if a promise broke",
    )
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO", help="which (default: all, in order)"
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized loads")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    return parser


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # as a shell reports a process the signal killed


if __name__ == "__main__":
    sys.exit(main())
