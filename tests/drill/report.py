"""What a drill scenario found, how big the drill is, and the table they make together."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import msgspec


class Size(msgspec.Struct, frozen=True, kw_only=True):
    """How hard each scenario pushes: FULL for the README's figures, QUICK for CI's tests."""

    crash_deliveries: int
    kills: int
    outage_deliveries: int
    outage_seconds: float
    projection_deliveries: int
    projection_kills: int
    replica_deliveries: int
    hostile_requests: int
    big_body_mb: int
    slow_clients: int
    big_deliveries: int
    slow_exports: int  # CSV export readers at once (the hostile server allows 4)
    export_mb: int  # the size of the roster they read
    forgery_rounds: int
    erasure_deliveries: int
    erasures: int
    erasure_rounds: int  # the middle one with a kill -9
    # Each timing promise's bound is checked times this: 1 in the full drill, where the bound is
    # the promise (the README's figures); at CI size a liveness bound only, since CI's machine
    # may be loaded and speed belongs to the full drill and the benchmarks.
    patience: float = 1.0

    def within(self, seconds: float) -> float:
        """A timing promise's bound, as this size checks it."""
        return seconds * self.patience


FULL = Size(
    crash_deliveries=20_000,
    kills=5,
    outage_deliveries=6_000,
    outage_seconds=8.0,
    projection_deliveries=30_000,
    projection_kills=5,
    replica_deliveries=10_000,
    hostile_requests=10_000,
    big_body_mb=100,
    slow_clients=200,
    big_deliveries=200,
    slow_exports=8,
    export_mb=30,
    forgery_rounds=40,
    erasure_deliveries=10_000,
    erasures=60,
    erasure_rounds=5,
)
QUICK = Size(
    crash_deliveries=3_000,
    kills=2,
    outage_deliveries=1_500,
    outage_seconds=4.0,
    projection_deliveries=10_000,  # five batches of the runner's 2,000: kills in the middle
    projection_kills=2,
    replica_deliveries=2_000,
    hostile_requests=2_000,
    big_body_mb=100,
    slow_clients=50,
    big_deliveries=60,
    slow_exports=8,
    export_mb=12,  # at 1 MB/s: far longer than a query may take, beyond every buffer
    forgery_rounds=4,
    erasure_deliveries=2_000,
    erasures=12,
    erasure_rounds=3,
    patience=12.0,  # 5 s -> 60 s, 2 s -> 24 s: still a hang, but not a slow machine
)


class Finding(msgspec.Struct, kw_only=True):
    """One scenario's figures; `broken` names every promise that did not hold."""

    scenario: str
    load: str
    faults: str
    bad_inputs: int = 0
    lost: int = 0
    duplicated: int = 0
    figures: str = ""
    broken: list[str] = msgspec.field(default_factory=list)

    def check(self, held: bool, promise: str) -> None:
        """Record `promise` as broken unless it held."""
        if not held:
            self.broken.append(promise)

    @property
    def held(self) -> bool:
        return not self.broken


_HEADER = ("scenario", "load held", "faults injected", "bad inputs", "lost", "dup.", "result")


def table(findings: Sequence[Finding]) -> str:
    """A Markdown table (it also reads well in a terminal), then the figures of each row."""
    rows = [
        (
            f.scenario,
            f.load,
            f.faults,
            f"{f.bad_inputs:,}",
            f"{f.lost:,}",
            f"{f.duplicated:,}",
            "held" if f.held else "BROKEN: " + "; ".join(f.broken),
        )
        for f in findings
    ]
    widths = [max(len(r[i]) for r in [_HEADER, *rows]) for i in range(len(_HEADER))]
    lines = [_line(_HEADER, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [_line(row, widths) for row in rows]
    lines.append("")
    lines += [f"- {f.scenario}: {f.figures}" for f in findings if f.figures]
    return "\n".join(lines)


def _line(cells: Sequence[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def top(counter: Counter[str], n: int = 3) -> str:
    """The n most common entries, for a finding's message: "a x3, b x1"."""
    return ", ".join(f"{name} x{count}" for name, count in counter.most_common(n))
