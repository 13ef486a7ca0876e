"""The drill's fault scenarios at CI size (real processes, a real PostgreSQL they take down),
and proof that their timing and lock checks bite."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from projections.registry import VIEW_NAMES
from tests.drill import QUICK, Finding, run
from tests.drill.faults import (
    BOUND,
    LockSample,
    LockWatch,
    Probe,
    Sample,
    Takeover,
    Window,
    check_locks,
    check_outage,
)
from tests.helpers import drill_directory, figure, held


@pytest.fixture
def root() -> Iterator[Path]:
    with drill_directory() as path:
        yield path


def test_crash_holds(root: Path) -> None:
    [finding] = run(["crash"], QUICK, root=root)
    assert f"{QUICK.kills} kills, each back up" in held(finding).figures


def test_outage_holds(root: Path) -> None:
    # held(): every probe answered 2xx or 503 + Retry-After, none acknowledged while PostgreSQL
    # was down, nothing acknowledged lost, intake and views back; each answer and the recovery
    # within QUICK's liveness bound. The times are reported, not asserted here: speed is the
    # full drill's (bound 5 s) and the benchmarks'.
    [finding] = run(["outage"], QUICK, root=root)
    assert figure(held(finding), r"(\d+) probes while PostgreSQL was down") >= 1
    assert re.search(
        r"slowest 503 during the outage \d+ ms; first accept [\d.]+ s after", finding.figures
    )
    assert re.search(r"views caught up with it [\d.]+ s after", finding.figures)


def test_projection_crash_holds(root: Path) -> None:
    [finding] = run(["projection-crash"], QUICK, root=root)
    assert f"{QUICK.projection_kills} kills mid-batch" in held(finding).figures
    positions = re.search(r"at positions ([\d, ]+) of ([\d,]+)", finding.figures)
    assert positions, finding.figures
    head = int(positions.group(2).replace(",", ""))
    assert all(0 < int(p.replace(",", "")) < head for p in positions.group(1).split(", "))


def test_replicas_hold(root: Path) -> None:
    [finding] = run(["replicas"], QUICK, root=root)
    views = len(VIEW_NAMES)
    assert figure(held(finding), rf"held (\d) of {views} views and was killed") >= 1
    assert re.search(r"took over every view [\d.]+ s later", finding.figures)  # within held()
    samples = re.search(r"(\d+) of (\d+) lock samples", finding.figures)
    assert samples, finding.figures
    assert samples.group(1) == samples.group(2) and int(samples.group(2)) >= 5, finding.figures


def test_the_outage_check_catches_slow_wrong_and_impossible_answers() -> None:
    def sample(sent: float, seconds: float, status: int | None, retry_after: bool) -> Sample:
        return Sample(
            sent=sent,
            seconds=seconds,
            status=status,
            retry_after=retry_after,
            delivery_id="d",
            position=1 if status == 200 else None,
        )

    probe = Probe("http://127.0.0.1:1", [])
    probe.samples = [
        sample(10.5, 5.2, 503, True),  # too slow
        sample(11.0, 0.1, 500, False),  # never allowed
        sample(11.5, 0.1, 503, False),  # no Retry-After
        sample(12.0, 0.1, 200, False),  # stored while the database was down?
    ]
    window = Window(down=10.0, up_called=18.0, up=18.5, accepted=6.0, projected=None)
    finding = Finding(scenario="outage", load="-", faults="-")
    assert check_outage(finding, probe, window, BOUND) == 5.2
    assert finding.broken == [
        "1 probes waited over 5 s (or never answered)",
        "2 probes answered neither 2xx nor 503 + Retry-After: 500, 503",
        "1 probes acknowledged while PostgreSQL was down",
        "first accept 6.00 s after PostgreSQL was back",
        "views caught up never after PostgreSQL was back",
    ]


def test_the_lock_check_catches_a_view_without_exactly_one_live_runner() -> None:
    watch = LockWatch("postgresql://127.0.0.1:1/none", [])
    both = {
        "roster": [7],
        "occupancy": [7],
        "payments": [7],
        "occurrences": [7],
        "roster_history": [7],
    }
    watch.samples = [
        LockSample(1.0, both, frozenset({7, 8})),
        LockSample(2.0, {**both, "payments": []}, frozenset({7, 8})),  # nobody runs payments
        LockSample(3.0, both, frozenset({8})),  # held by a dead process's session
        LockSample(4.5, {}, frozenset({8})),  # during the takeover: not counted
        LockSample(
            11.0,
            {
                "roster": [8],
                "occupancy": [8],
                "payments": [-1],
                "occurrences": [8],
                "roster_history": [8],
            },
            frozenset({8}),
        ),
    ]
    takeover = Takeover(victim="a", survivor="b", views=5, killed=4.0, seconds=6.0)
    finding = Finding(scenario="replicas", load="-", faults="-")
    assert check_locks(finding, watch, takeover, BOUND) == (4, 1)
    assert finding.broken == [
        "3 lock samples without exactly one live runner per view",
        "b took over 6.00 s after the kill",
    ]
