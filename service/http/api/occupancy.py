"""GET /v1/events/{event}/occupancy (now, or `at=` a past instant), …/occupancy/timeline (JSON
or CSV) and …/check-ins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Final
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from projections import occupancy
from service.http.api import common
from service.http.api.common import LATEST, Api, ApiError
from service.http.api.models import CheckIns, Timeline
from service.http.exports import csv_rows, struct_rows
from service.http.responses import json_response

# Bucket widths; "1d" is a local calendar day (23, 24 or 25 hours), the others are fixed
# lengths that divide an hour, cut at the local time zone's whole minutes and hours.
BUCKETS: Final = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "30m": timedelta(minutes=30),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
MAX_BUCKETS: Final = 10_000


def routes(api: Api) -> list[Route]:
    return [
        api.event_route("/v1/events/{event}/occupancy", now_or_then),
        api.event_route("/v1/events/{event}/occupancy/timeline", timeline),
        api.event_route("/v1/events/{event}/check-ins", check_ins),
    ]


async def now_or_then(request: Request, slug: str) -> Response:
    when = common.time(request.query_params, "at")
    as_of = common.time(request.query_params, "as_of")
    pool = common.pool(request)
    table = common.table(request)
    if when is not None and as_of is not None:
        raise ApiError(400, "bad_parameter", "give `at` or `as_of`, not both")
    if as_of is not None:
        answer = await occupancy.as_of(pool, slug, as_of)
    else:
        answer = await (occupancy.at(pool, slug, when) if when else occupancy.now(pool, slug))
    if table.kind == "json":
        return json_response(answer)
    return csv_rows(*struct_rows(occupancy.Occupancy, [answer]), f"occupancy-{slug}", table)


async def timeline(request: Request, slug: str) -> Response:
    params = request.query_params
    name = common.choice(params, "bucket", tuple(BUCKETS), default="5m")
    assert name is not None
    tz = common.zone(request)
    width = BUCKETS[name]
    pool = common.pool(request)
    start, end = common.local_time(params, "from", tz), common.local_time(params, "to", tz)
    if start is None or end is None:
        first, last = await occupancy.span(pool, slug)
        # Clamped as `from` and `to` are: a stored time near datetime's end (a sender's
        # bogus one) must not overflow the last bucket's end.
        first, last = (min(t, LATEST - width) if t else None for t in (first, last))
        start = start or (floor(first, name, tz) if first else None)
        end = end or (step(floor(last, name, tz), name, tz) if last else None)
    if start is None or end is None:
        return _timeline_answer(request, slug, name, tz, None, None, [])
    if end <= start:
        raise ApiError(400, "bad_parameter", "`to` must be after `from`")
    shortest = timedelta(hours=23) if name == "1d" else width
    if (end - start) / shortest > MAX_BUCKETS:
        raise ApiError(400, "bad_parameter", f"more than {MAX_BUCKETS} buckets: narrow the range")
    buckets = await occupancy.buckets(pool, slug, bounds(start, end, name, tz))
    return _timeline_answer(request, slug, name, tz, start, end, buckets)


def floor(when: datetime, name: str, tz: ZoneInfo) -> datetime:
    """The start of the bucket of width `name` holding `when`, on `tz`'s wall clock."""
    local = when.astimezone(tz)
    if name == "1d":
        return datetime.combine(local.date(), dtime(0), tzinfo=tz).astimezone(UTC)
    minutes = int(BUCKETS[name].total_seconds()) // 60
    of_day = local.hour * 60 + local.minute
    floored = of_day - of_day % minutes
    # replace() keeps `fold`: in the hour a DST change repeats, the right one of the two.
    local = local.replace(hour=floored // 60, minute=floored % 60, second=0, microsecond=0)
    return local.astimezone(UTC)


def step(when: datetime, name: str, tz: ZoneInfo) -> datetime:
    """The end of the bucket that starts at `when`: a fixed length, or the same wall time on
    the next local day."""
    if name == "1d":
        local = when.astimezone(tz)
        return (local.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=tz).astimezone(UTC)
    return when + BUCKETS[name]


def bounds(start: datetime, end: datetime, name: str, tz: ZoneInfo) -> list[datetime]:
    """The buckets' edges from `start` until the first at or after `end`."""
    edges = [start]
    while edges[-1] < end:
        edges.append(step(edges[-1], name, tz))
    return edges


async def check_ins(request: Request, slug: str) -> Response:
    limit = common.limit(request.query_params, default=20, maximum=200)
    table = common.table(request)
    items = await occupancy.check_ins(common.pool(request), slug, limit)
    if table.kind == "json":
        return json_response(CheckIns(slug, items))
    return csv_rows(*struct_rows(occupancy.CheckIn, items), f"check-ins-{slug}", table)


def _timeline_answer(
    request: Request,
    slug: str,
    name: str,
    tz: ZoneInfo,
    start: datetime | None,
    end: datetime | None,
    buckets: list[occupancy.Bucket],
) -> Response:
    table = common.table(request)
    if table.kind != "json":
        return csv_rows(*struct_rows(occupancy.Bucket, buckets), f"timeline-{slug}", table)
    answer = Timeline(
        event=slug,
        bucket=name,  # type: ignore[arg-type]
        tz=tz.key,
        start=start,
        end=end,
        buckets=buckets,
    )
    return json_response(answer)
