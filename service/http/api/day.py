"""What the dashboard needs for real event days (read scope, counts only): the days with
activity in a time zone, who is inside by when their stay began, and the pipeline's health.

The rule for "inside on a day" (README, Dashboard): an attendee counts as inside on day D only
if the stay they are in began on D; one still marked inside from an earlier day (never checked
out) is counted apart, as `earlier`, never as inside today.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
import msgspec
import psycopg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from domain import deliveries as stored_form
from projections import occupancy
from projections.status import read_status
from service import intake_log
from service.eventstore.source import SOURCE
from service.eventstore.store import EVENTS_TABLE
from service.http.api import common
from service.http.api.common import Api, ApiError, Unavailable
from service.http.responses import json_response

STALE_SECONDS: Final = 60.0  # a view whose oldest unapplied delivery is older is not moving
_HOUR_SCAN: Final = 20_000  # stored deliveries read at most to count the last hour's
PARAMETERS: Final = {
    "/v1/events/{event}/days": ("tz",),
    "/v1/events/{event}/inside": ("since",),
}


class Days(msgspec.Struct, frozen=True, kw_only=True):
    event: str
    tz: str
    days: list[occupancy.Day]  # newest first


class Inside(msgspec.Struct, frozen=True, kw_only=True):
    """Inside now, by when their stay began."""

    event: str
    since: datetime
    inside: int  # stays begun at or after `since`, not ended
    earlier: int  # still marked inside from before `since` (never checked out)


class ViewHealth(msgspec.Struct, frozen=True, kw_only=True):
    view: str
    state: str
    lag_events: int
    lag_seconds: float


class PipelineHealth(msgspec.Struct, frozen=True, kw_only=True):
    """The pipeline at a glance: is JTE sending, is anything refused, do the views move."""

    last_delivery_at: datetime | None
    refused_last_hour: int
    quarantined_last_hour: int
    views: list[ViewHealth]
    stale: bool  # a view failed, or one is more than stale_after seconds behind
    stale_after: float


def routes(api: Api) -> list[Route]:
    return [
        api.event_route("/v1/events/{event}/days", active_days),
        api.event_route("/v1/events/{event}/inside", inside),
        api.route("/v1/health", health),
    ]


async def active_days(request: Request, slug: str) -> Response:
    zone = request.query_params.get("tz", "UTC")
    refused = ApiError(400, "bad_parameter", "`tz` must be an IANA time zone")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise refused from None
    try:
        found = await occupancy.days(common.pool(request), slug, zone)
    except asyncpg.InvalidParameterValueError:  # one Python knows and PostgreSQL does not
        raise refused from None
    return json_response(Days(event=slug, tz=zone, days=found))


async def inside(request: Request, slug: str) -> Response:
    since = common.time(request.query_params, "since")
    if since is None:
        raise ApiError(400, "bad_parameter", "`since` (an ISO 8601 time) is needed")
    recent, earlier = await occupancy.inside_since(common.pool(request), slug, since)
    return json_response(Inside(event=slug, since=since, inside=recent, earlier=earlier))


async def health(request: Request) -> Response:
    url: str = request.app.state.database_url
    try:
        found = await asyncio.to_thread(_health, url)
    except psycopg.OperationalError as error:
        raise Unavailable from error
    return json_response(found)


def _health(database_url: str) -> PipelineHealth:
    hour_ago = datetime.fromtimestamp(time.time() - 3600, UTC)
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        last, quarantined = _last_hour(conn, hour_ago)
        refused = intake_log.count_refused(conn, hour_ago)
        registry = conn.execute(
            "SELECT to_regclass('rollcall.view_versions') IS NOT NULL"
        ).fetchone()
        statuses = read_status(conn, SOURCE) if registry and registry[0] else []
    views = [
        ViewHealth(view=s.view, state=s.state, lag_events=s.lag_events, lag_seconds=s.lag_seconds)
        for s in statuses
    ]
    stale = any(
        v.state in ("failed", "missing") or (v.lag_events > 0 and v.lag_seconds > STALE_SECONDS)
        for v in views
    )
    return PipelineHealth(
        last_delivery_at=last,
        refused_last_hour=refused,
        quarantined_last_hour=quarantined,
        views=views,
        stale=stale,
        stale_after=STALE_SECONDS,
    )


def _last_hour(conn: psycopg.Connection[Any], since: datetime) -> tuple[datetime | None, int]:
    """The newest stored delivery's receipt time, and how many of the last hour's were
    quarantined (reading back from the newest, at most _HOUR_SCAN)."""
    last, quarantined, below, read = None, 0, 2**62, 0
    while read < _HOUR_SCAN:
        rows = conn.execute(
            f"SELECT notification_id, state FROM rollcall.{EVENTS_TABLE} "
            "WHERE notification_id < %s ORDER BY notification_id DESC LIMIT 200",
            (below,),
        ).fetchall()
        for position, state in rows:
            read, below = read + 1, position
            delivery = stored_form.decode_body(bytes(state))
            last = last or delivery.timestamp
            if delivery.timestamp < since:
                return last, quarantined
            quarantined += delivery.quarantine_reason is not None
        if len(rows) < 200:
            break
    return last, quarantined
