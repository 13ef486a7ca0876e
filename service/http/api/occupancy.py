"""GET /v1/events/{event}/occupancy (now, or `at=` a past instant), …/occupancy/timeline (JSON
or CSV) and …/check-ins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from projections import occupancy
from service.http.api import common
from service.http.api.common import LATEST, Api, ApiError
from service.http.api.models import CheckIns, Timeline
from service.http.exports import csv_rows
from service.http.responses import json_response

BUCKETS: Final = {
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
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
    pool = common.pool(request)
    if when is not None:
        return json_response(await occupancy.at(pool, slug, when))
    return json_response(await occupancy.now(pool, slug))


async def timeline(request: Request, slug: str) -> Response:
    params = request.query_params
    name = common.choice(params, "bucket", tuple(BUCKETS), default="5m")
    assert name is not None
    width = BUCKETS[name]
    pool = common.pool(request)
    start, end = common.time(params, "from"), common.time(params, "to")
    if start is None or end is None:
        first, last = await occupancy.span(pool, slug)
        # Clamped as `from` and `to` are: a stored time near datetime's end (a sender's
        # bogus one) must not overflow the last bucket's end.
        first, last = (min(t, LATEST - width) if t else None for t in (first, last))
        start = start or (_floor(first, width) if first else None)
        end = end or (_floor(last, width) + width if last else None)
    if start is None or end is None:
        return _timeline_answer(request, slug, name, None, None, [])
    if end <= start:
        raise ApiError(400, "bad_parameter", "`to` must be after `from`")
    if (end - start) / width > MAX_BUCKETS:
        raise ApiError(400, "bad_parameter", f"more than {MAX_BUCKETS} buckets: narrow the range")
    buckets = await occupancy.buckets(pool, slug, start, end, width)
    return _timeline_answer(request, slug, name, start, end, buckets)


async def check_ins(request: Request, slug: str) -> Response:
    limit = common.limit(request.query_params, default=20, maximum=200)
    items = await occupancy.check_ins(common.pool(request), slug, limit)
    return json_response(CheckIns(slug, items))


def _timeline_answer(
    request: Request,
    slug: str,
    name: str,
    start: datetime | None,
    end: datetime | None,
    buckets: list[occupancy.Bucket],
) -> Response:
    if common.wants_csv(request):
        rows = ([b.start, b.end, b.entered, b.exited, b.inside] for b in buckets)
        header = ["start", "end", "entered", "exited", "inside"]
        return csv_rows(header, rows, f"occupancy-{slug}.csv")
    answer = Timeline(event=slug, bucket=name, start=start, end=end, buckets=buckets)  # type: ignore[arg-type]
    return json_response(answer)


def _floor(when: datetime, width: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((when - epoch) // width) * width
