"""What operators and their tools ask a process: is it alive (/healthz), can it take deliveries
(/readyz), and its metrics (/metrics, Prometheus text)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Literal

import asyncpg
import msgspec
import psycopg
from prometheus_client.registry import Collector
from psycopg import sql
from starlette.requests import Request
from starlette.responses import Response

from projections.schema import INTERNAL, VIEW_VERSIONS
from projections.status import read_status
from service.eventstore.source import SOURCE
from service.eventstore.store import EVENTS_TABLE
from service.http.responses import json_response
from service.metrics import CONTENT_TYPE, Standing, Unavailable, exposition


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
    """GET /metrics: the whole server's counters and the projections as the database has them."""
    standing: Collector
    try:
        standing = await asyncio.to_thread(_standing, request.app.state.database_url)
    except (OSError, psycopg.Error):
        standing = Unavailable()
    return Response(exposition(standing), media_type=CONTENT_TYPE)


def _standing(database_url: str) -> Standing:
    """The store's head, every view's status (none before the views are set up), and how many
    deliveries are stored quarantined."""
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        with conn.cursor() as cur:
            head = SOURCE.head(cur)
            quarantined = _QUARANTINED.count(cur, head)
        registry = f"{INTERNAL}.{VIEW_VERSIONS}"
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (registry,)).fetchone()
        if not (row and row[0]):
            return Standing(head, [], quarantined)
        statuses = read_status(conn, SOURCE)
    # One reading: the head the lags were measured against.
    return Standing(statuses[0].head, statuses, quarantined)


class _QuarantineCount:
    """Quarantined deliveries stored, counted once per position: each scrape reads only what
    was stored since the last (the store is append-only, so a count never changes)."""

    # The stored form is JSON written by msgspec (domain/deliveries.py): an unquarantined
    # delivery's bytes hold this exact text, which no escaped string value can.
    _READABLE = b'"quarantine_reason":null'

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._upto = 0
        self._count = 0

    def count(self, cur: psycopg.Cursor[Any], head: int) -> int:
        with self._lock:
            if head < self._upto:  # a different (recreated) store: start again
                self._upto, self._count = 0, 0
            if head > self._upto:
                row = cur.execute(
                    sql.SQL(
                        "SELECT count(*) FILTER (WHERE position(%s::bytea IN state) = 0) "
                        "FROM {} WHERE notification_id > %s AND notification_id <= %s"
                    ).format(sql.Identifier(INTERNAL, EVENTS_TABLE)),
                    (self._READABLE, self._upto, head),
                ).fetchone()
                self._count += int(row[0]) if row else 0
                self._upto = head
            return self._count


_QUARANTINED = _QuarantineCount()
