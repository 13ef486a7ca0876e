"""GET /v1/events: the configured JTE events with their headline numbers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from projections import occupancy, roster
from service.http.api import common
from service.http.api.common import Api
from service.http.api.models import Events, EventSummary
from service.http.exports import csv_rows, struct_rows
from service.http.responses import json_response


def routes(api: Api) -> list[Route]:
    async def summaries(request: Request) -> Response:
        table = common.table(request)
        pool = common.pool(request)
        granted = common.grant(request)
        configured = api.events.events
        visible = [slug for slug in configured if granted.sees(slug)]
        registered = await roster.registered(pool, visible)
        inside = await occupancy.inside_now(pool, list(registered))
        items = [
            EventSummary(
                event=slug,
                registered=count,
                inside_now=inside.get(slug, 0),
                timezone=configured[slug].timezone if slug in configured else "UTC",
            )
            for slug, count in registered.items()
        ]
        if table.kind != "json":
            return csv_rows(*struct_rows(EventSummary, items), "events", table)
        return json_response(Events(items))

    return [api.route("/v1/events", summaries)]
