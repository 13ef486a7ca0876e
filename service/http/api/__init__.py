"""The analyst API, v1: roster, one attendee, occupancy and its timeline, check-ins, payments,
and the views' status and rebuild.

Each resource's handlers are thin (parameters in, the view's query, the answer out): the
queries belong to the views (projections/roster.py, occupancy.py, payments.py), read with
asyncpg from the `analytics` schema. Lists page by an opaque keyset cursor; every list and
summary also answers as CSV (`format=csv` or `Accept: text/csv`, `dialect=excel` for Excel),
roster and payments as XLSX too (`format=xlsx`; service/http/exports.py).
"""

from __future__ import annotations

from typing import Final

from starlette.routing import Route

from service.config import EventsWatcher
from service.http.api import (
    day,
    deliveries,
    events,
    occupancy,
    payments,
    privacy,
    roster,
    views,
)
from service.http.api.common import Api

# The query parameters each route knows (OpenAPI documents exactly these); any other, or one
# given twice, is a 400 naming them: a question the API does not understand gets no answer.
PARAMETERS: Final[dict[str, tuple[str, ...]]] = {
    "/v1/events": ("format", "dialect"),
    "/v1/events/{event}/roster": (
        "status", "role", "checked_in", "paid", "q", "limit", "cursor", "format", "dialect",
        "as_of",
    ),
    "/v1/events/{event}/attendees/{attendee_id}": ("as_of",),
    "DELETE /v1/events/{event}/attendees/{attendee_id}": (),  # an erasure takes none
    "/v1/events/{event}/attendees/{attendee_id}/lift": (),
    "/v1/events/{event}/occupancy": ("at", "as_of", "format", "dialect"),
    "/v1/events/{event}/occupancy/timeline": ("bucket", "from", "to", "tz", "format", "dialect"),
    "/v1/events/{event}/check-ins": ("limit", "format", "dialect"),
    "/v1/events/{event}/payments": (
        "currency", "method", "limit", "cursor", "format", "dialect", "as_of",
    ),
    "/v1/events/{event}/payments/summary": ("tz", "as_of", "format", "dialect"),
    "/v1/projections/{name}/rebuild": ("skip_poison",),
    "/v1/subjects": ("email",),
    "/v1/subjects/export": ("email",),
    "/v1/deliveries": deliveries.PARAMETERS,
    "/v1/doctor": deliveries.DOCTOR_PARAMETERS,
    **day.PARAMETERS,
}  # fmt: skip


def routes(configured: EventsWatcher) -> list[Route]:
    """The /v1 analyst routes (each checks its token, its parameters and its event)."""
    api = Api(configured, PARAMETERS)
    return [
        *events.routes(api),
        *roster.routes(api),
        *occupancy.routes(api),
        *payments.routes(api),
        *views.routes(api),
        *privacy.routes(api),
        *deliveries.routes(api),
        *day.routes(api),
    ]
