"""GET /v1/events/{event}/roster (a page, or every row as CSV) and …/attendees/{attendee_id}."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from projections import occupancy, roster, roster_history
from service.eventstore.history import attendee_history
from service.http.api import common
from service.http.api.common import Api, ApiError
from service.http.api.models import AttendeeDetail, RosterPage
from service.http.exports import csv_rows
from service.http.responses import json_response


def routes(api: Api) -> list[Route]:
    return [
        api.event_route("/v1/events/{event}/roster", page),
        api.event_route("/v1/events/{event}/attendees/{attendee_id}", attendee),
    ]


async def page(request: Request, slug: str) -> Response:
    params = request.query_params
    status = common.choice(params, "status", roster.STATUSES, default=None)
    checked_in, paid = common.flag(params, "checked_in"), common.flag(params, "paid")
    role, q = common.text(params, "role"), common.text(params, "q")
    only = roster.Filter(status=status, role=role, checked_in=checked_in, paid=paid, q=q)
    table = common.table(request, xlsx=True)
    when = common.time(params, "as_of")
    # As of a moment: the rows of the roster's history then in force, read as the live ones.
    source = roster.ROSTER_RELATION if when is None else roster_history.source(when)
    if table.kind != "json":
        names = await roster.field_names(common.pool(request), slug, source)
        query, args, header = roster.export(slug, only, names, source)
        exports = common.exports(request)
        if table.kind == "csv" and table.dialect == "csv":
            return await exports.stream(query, args, f"roster-{slug}.csv", header)
        rows = await exports.fetch(query, args, times=table.kind == "xlsx")
        return csv_rows(header, rows, f"roster-{slug}", table)
    limit = common.limit(params)
    after = common.decode_cursor(params, 3)
    items, more = await roster.page(common.pool(request), slug, only, limit, after, source)
    next_cursor = common.encode_cursor(more) if more else None
    return json_response(RosterPage(event=slug, items=items, next_cursor=next_cursor))


async def attendee(request: Request, slug: str) -> Response:
    attendee_id = request.path_params["attendee_id"]
    if len(attendee_id) > 200 or "\x00" in attendee_id:
        raise ApiError(404, "unknown_attendee", "no such attendee")
    pool = common.pool(request)
    when = common.time(request.query_params, "as_of")
    if when is None:
        found = await roster.attendee(pool, slug, attendee_id)
        presence = await occupancy.presence_of(pool, slug, attendee_id)
        history = await attendee_history(pool, slug, attendee_id)
    else:
        found = await roster.attendee(pool, slug, attendee_id, roster_history.source(when))
        presence = await occupancy.presence_as_of(pool, slug, attendee_id, when)
        history = [
            h
            for h in await attendee_history(pool, slug, attendee_id)
            if (h.occurred_at or h.received_at) <= when
        ]
    if found is None:
        raise ApiError(404, "unknown_attendee", f"no attendee {attendee_id[:64]!r} in {slug!r}")
    detail = AttendeeDetail(event=slug, attendee=found, presence=presence, history=history)
    return json_response(detail)
