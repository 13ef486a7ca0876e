"""The reliability and security drill: real processes and a real PostgreSQL, faults injected
on purpose, and a table of what held (`scripts/drill`)."""

from __future__ import annotations

import logging
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from tests.drill import access, erasure, faults, forgery, hostile
from tests.drill.harness import Workspace
from tests.drill.report import FULL, QUICK, Finding, Size, table

Scenario = Callable[[Workspace, Size], Finding]

SCENARIOS: Final[dict[str, Scenario]] = {
    "crash": faults.crash,
    "outage": faults.outage,
    "projection-crash": faults.projection_crash,
    "replicas": faults.replicas,
    "hostile": hostile.hostile,
    "forgery": forgery.forgery,
    "erasure": erasure.erasure,
    "access": access.access,  # last: it reads every log the others left
}

log = logging.getLogger("rollcall.drill")


def run(names: Sequence[str], size: Size, root: Path | None = None) -> list[Finding]:
    """Run the named scenarios in order on one workspace; a scenario that cannot run is a
    finding with its error, never a silent pass."""
    work = root or Path(tempfile.mkdtemp(prefix="rollcall-drill-"))
    ws = Workspace(work)
    ws.start()
    findings = []
    try:
        for name in names:
            started = time.monotonic()
            print(f"drill: {name} ...", flush=True)
            finding = _attempt(name, ws, size)
            print(
                f"drill: {name} {'held' if finding.held else 'BROKEN'} in "
                f"{time.monotonic() - started:.0f} s",
                flush=True,
            )
            findings.append(finding)
    finally:
        ws.close()
    return findings


def _attempt(name: str, ws: Workspace, size: Size) -> Finding:
    try:
        return SCENARIOS[name](ws, size)
    except Exception as error:  # the table must show it, and the exit code must say so
        log.debug("scenario %s failed", name, exc_info=True)
        detail = traceback.format_exception_only(error)[-1].strip()
        return Finding(scenario=name, load="-", faults="-", broken=[f"could not run: {detail}"])


__all__ = ["FULL", "QUICK", "SCENARIOS", "Finding", "Size", "run", "table"]
