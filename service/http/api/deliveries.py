"""GET /v1/deliveries (the delivery log), GET /v1/deliveries/{key} (one stored delivery) and
GET /v1/doctor (what the refusals say): admin scope, since they show bodies and the headers
that came (service/deliveries.py, service/doctor.py)."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import psycopg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import deliveries, doctor, intake_log
from service.deliveries import OUTCOMES, Filters, LogPage
from service.http.api import common
from service.http.api.common import Api, ApiError, Unavailable
from service.http.responses import json_response

# The query parameters GET /v1/deliveries knows (service/http/api/__init__.py lists them).
PARAMETERS = ("event", "outcome", "from", "to", "attendee", "limit", "cursor")
DOCTOR_PARAMETERS = ("hours",)
MAX_HOURS = 24 * 7


def routes(api: Api) -> list[Route]:
    return [
        api.route("/v1/deliveries", listing, "admin"),
        api.route("/v1/deliveries/{key}", one, "admin"),
        api.route("/v1/doctor", doctor_advice, "admin"),
    ]


async def doctor_advice(request: Request) -> Response:
    text = request.query_params.get("hours", "24")
    try:
        hours = float(text)
    except ValueError:
        hours = -1.0
    if not 0 < hours <= MAX_HOURS:
        raise ApiError(400, "bad_parameter", f"`hours` must be a number from 0 to {MAX_HOURS}")
    url: str = request.app.state.database_url
    entries = await _in_thread(url, intake_log.recent_refusals, hours * 3600)
    return json_response(doctor.diagnose(entries, request.app.state.events.events, hours))


async def listing(request: Request) -> Response:
    params = request.query_params
    filters = Filters(
        event=common.text(params, "event"),
        outcome=common.choice(params, "outcome", OUTCOMES, None),  # type: ignore[arg-type]
        since=common.time(params, "from"),
        until=common.time(params, "to"),
        attendee=common.text(params, "attendee"),
    )
    size = common.limit(params)
    values = common.decode_cursor(params, 2)
    cursor = None
    if values is not None:
        if not all(v.isascii() and v.isdigit() and len(v) < 19 for v in values):
            raise common.bad_cursor()
        cursor = (int(values[0]), int(values[1]))
    url: str = request.app.state.database_url
    items, following, scanned = await _in_thread(url, deliveries.page, filters, size, cursor)
    next_cursor = common.encode_cursor([str(v) for v in following]) if following else None
    return json_response(LogPage(items=items, next_cursor=next_cursor, scanned=scanned))


async def one(request: Request) -> Response:
    try:
        key = UUID(request.path_params["key"])
    except ValueError:
        raise ApiError(404, "not_found", "no stored delivery has that key") from None
    found = await _in_thread(request.app.state.database_url, deliveries.detail, key)
    if found is None:
        raise ApiError(404, "not_found", "no stored delivery has that key")
    return json_response(found)


async def _in_thread(url: str, query: Any, *args: Any) -> Any:
    def run() -> Any:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return query(conn, *args)

    try:
        return await asyncio.to_thread(run)
    except psycopg.OperationalError as error:
        raise Unavailable from error
