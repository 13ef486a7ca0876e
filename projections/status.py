"""Where each view stands: position, head, lag in events and seconds, state, dead letters.

Computed here only: `rollcall status`, GET /v1/projections (and the dashboard, which reads it)
and /metrics all report what read_status says.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
import psycopg

from projections.registry import VIEW_NAMES
from projections.schema import Version, dead_letter_counts, errors, versions
from projections.source import DeliverySource
from projections.tracking import positions

State = Literal["live", "rebuilding", "failed", "missing"]


class Rebuilding(msgspec.Struct, frozen=True):
    """A build in progress (or interrupted) of a new version."""

    version: int
    position: int
    error: str | None = None  # what stopped it, if it stopped (a strict build hit poison)


class ViewStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One view's state, as `rollcall status` and GET /v1/projections report it."""

    view: str
    version: int | None
    state: State
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    dead_letters: int
    last_error: str | None
    rebuilding: Rebuilding | None


def read_status(conn: psycopg.Connection[Any], source: DeliverySource) -> list[ViewStatus]:
    """Every view's status, read in one go."""
    with conn.cursor() as cur:
        top = source.head(cur)
        registered = versions(conn)
        tracked = positions(cur, registered)
        failed, letters = errors(conn), dead_letter_counts(conn)
        return [
            _view_status(source, cur, name, registered, tracked, failed, letters, top)
            for name in VIEW_NAMES
        ]


def _view_status(
    source: DeliverySource,
    cur: psycopg.Cursor[Any],
    name: str,
    registered: list[Version],
    tracked: dict[Version, int],
    errors: dict[tuple[str, int], str],
    letters: dict[tuple[str, int], int],
    top: int,
) -> ViewStatus:
    live = next((v for v in registered if v.view == name and v.state == "live"), None)
    building = [v for v in registered if v.view == name and v.state == "building"]
    rebuilding = None
    if building:
        last = building[-1]
        rebuilding = Rebuilding(last.version, tracked[last], errors.get((name, last.version)))
    if live is None:
        return ViewStatus(
            view=name, version=None, state="missing", position=0, head=top, lag_events=top,
            lag_seconds=0.0, dead_letters=0, last_error=None, rebuilding=rebuilding,
        )  # fmt: skip
    position = tracked[live]
    error = errors.get((name, live.version))
    state: State = "failed" if error else "rebuilding" if rebuilding else "live"
    return ViewStatus(
        view=name,
        version=live.version,
        state=state,
        position=position,
        head=top,
        lag_events=max(0, top - position),
        lag_seconds=_lag_seconds(source, cur, position, top),
        dead_letters=letters.get((name, live.version), 0),
        last_error=error,
        rebuilding=rebuilding,
    )


def _lag_seconds(
    source: DeliverySource, cur: psycopg.Cursor[Any], position: int, top: int
) -> float:
    """How long the oldest delivery the view has not applied has been waiting."""
    if position >= top:
        return 0.0
    oldest = source.received_after(cur, position)
    if oldest is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - oldest).total_seconds())
