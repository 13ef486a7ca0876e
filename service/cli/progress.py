"""A one-line progress bar on stderr for long commands (simulate, replay): stdout keeps the
result alone, so `rollcall simulate ... > out` or `--json | jq` read only that."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """Share done, items/s and ETA: redrawn in place on a terminal, a line every 5 s if not."""

    def __init__(self, unit: str) -> None:
        self._unit = unit
        self._started = time.monotonic()
        self._last = 0.0
        self._tty = sys.stderr.isatty()
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < (0.2 if self._tty else 5.0) and done < total:
            return
        self._last = now
        share = min(1.0, done / total) if total else 1.0
        rate = done / max(now - self._started, 1e-6)
        eta = f"{(total - done) / rate:.0f}s" if rate > 0 and done < total else "0s"
        line = (
            f"[{'#' * int(share * 30):30}] {share:4.0%} {done:,}/{total:,} {self._unit} "
            f"{rate:,.0f}/s ETA {eta}"
        )
        print(
            ("\r" if self._tty else "") + line,
            end="" if self._tty else "\n",
            file=sys.stderr,
            flush=True,
        )
        self._drawn = True

    def finish(self) -> None:
        """End the bar's line (the result goes to stdout after it)."""
        if self._tty and self._drawn:
            print(file=sys.stderr)
