"""Waiting for the live views to catch up, and snapshots of an analytics schema to compare
two builds (tests, and the drill's "views equal a fresh rebuild")."""

from __future__ import annotations

import time
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.types.json import set_json_loads

from projections.status import read_status
from service.eventstore.source import SOURCE

# Not attendee_deliveries nor occurrences: they list store positions, which depend on arrival
# order.
ANALYTICS_VIEWS: Final = (
    "roster",
    "presence",
    "occupancy",
    "occupancy_changes",
    "occupancy_timeline",
    "payments",
    "payment_totals",
    "roster_fields",
    "roster_history",
)


def wait_until_caught_up(
    database_url: str, timeout: float = 30.0, *, beside_a_build: bool = False
) -> None:
    """Block until every live view has applied everything in the store (and, unless
    `beside_a_build`, no rebuild is running or stopped beside it)."""
    deadline = time.monotonic() + timeout
    states = ("live", "rebuilding") if beside_a_build else ("live",)
    statuses: list[Any] = []
    while True:
        try:
            with psycopg.connect(database_url) as conn:
                statuses = read_status(conn, SOURCE)
            if statuses and all(s.state in states and s.lag_events == 0 for s in statuses):
                return
        except psycopg.errors.UndefinedTable:
            pass  # the runner has not created its tables yet
        if time.monotonic() > deadline:
            raise AssertionError(f"views did not catch up: {statuses}")
        time.sleep(0.1)


def snapshot(database_url: str, schema: str = "analytics") -> dict[str, list[tuple[Any, ...]]]:
    """Every analytics view's rows, sorted, so two builds can be compared."""
    result = {}
    with psycopg.connect(database_url) as conn:
        # JSON as the text PostgreSQL holds: 12.50 and 12.5 must not compare equal.
        set_json_loads(lambda text: text, conn)
        for view in ANALYTICS_VIEWS:
            exists = conn.execute("SELECT to_regclass(%s)", (f"{schema}.{view}",)).fetchone()
            if not exists or exists[0] is None:
                continue
            rows = conn.execute(
                sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, view))
            ).fetchall()
            result[view] = sorted(rows, key=repr)
    return result
