"""What operators and their tools ask a process: is it alive (/healthz), can it take deliveries
(/readyz), and its metrics (/metrics, Prometheus text)."""

from __future__ import annotations

import asyncio
from typing import Literal

import asyncpg
import msgspec
import psycopg
from starlette.requests import Request
from starlette.responses import Response

from projections.schema import INTERNAL, VIEW_VERSIONS
from projections.status import ViewStatus, read_status
from service.eventstore.source import SOURCE
from service.eventstore.store import EVENTS_TABLE
from service.http.responses import json_response
from service.metrics import METRICS, projection_lines


class Health(msgspec.Struct, frozen=True):
    status: Literal["ok"]


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ready", "unavailable"]
    database: str


async def healthz(request: Request) -> Response:
    """The process answers."""
    return json_response(Health("ok"))


async def readyz(request: Request) -> Response:
    """Ready to take deliveries: the database answers and the event store is in place. A failed
    view is not a reason (status, metrics and the dashboard report it): its failure is in the
    shared database, so every replica would refuse webhooks at once for a view's sake."""
    pool: asyncpg.Pool = request.app.state.pool
    try:
        async with asyncio.timeout(2):
            ready = await pool.fetchval(
                "SELECT to_regclass($1) IS NOT NULL", f"{INTERNAL}.{EVENTS_TABLE}"
            )
    except Exception as error:  # any failure to answer means "not ready", never a 500
        unreachable = f"unreachable ({type(error).__name__})"
        return json_response(Readiness(status="unavailable", database=unreachable), 503)
    if not ready:
        return json_response(Readiness(status="unavailable", database="schema missing"), 503)
    return json_response(Readiness(status="ready", database="ok"))


async def metrics(request: Request) -> Response:
    """GET /metrics: this process's counters and the projections as the database has them."""
    lines = METRICS.text()
    try:
        head, statuses = await asyncio.to_thread(_standing, request.app.state.database_url)
    except (OSError, psycopg.Error):
        lines += ["# projections: database unavailable"]
    else:
        lines += projection_lines(head, statuses)
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


def _standing(database_url: str) -> tuple[int, list[ViewStatus]]:
    """The store's head, and every view's status (none before the views are set up)."""
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        with conn.cursor() as cur:
            head = SOURCE.head(cur)
        registry = f"{INTERNAL}.{VIEW_VERSIONS}"
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (registry,)).fetchone()
        if not (row and row[0]):
            return head, []
        statuses = read_status(conn, SOURCE)
    return statuses[0].head, statuses  # one reading: the head the lags were measured against
