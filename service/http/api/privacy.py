"""Personal data over HTTP (admin tokens): DELETE /v1/events/{event}/attendees/{attendee_id}
erases an attendee, POST …/{attendee_id}/lift lifts the block an erasure leaves; GET
/v1/subjects?email= finds a person, GET /v1/subjects/export?email= returns everything held
about them (service/privacy.py)."""

from __future__ import annotations

import asyncio

import psycopg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import privacy, tokens
from service.eventstore import keys
from service.eventstore.store import DeliveryStore, StoreUnavailable
from service.http.api import common
from service.http.api.common import Api, ApiError, Unavailable
from service.http.responses import json_response

# How long an erasure waits for the live views before it answers (the receipt says which).
_WAIT_SECONDS = 5.0


def routes(api: Api) -> list[Route]:
    async def erase(request: Request) -> Response:
        slug: str = request.path_params["event"]
        api.check_event(request, slug)
        attendee_id = _attendee(request)
        name = await tokens.name_of(common.pool(request), _bearer(request))
        store: DeliveryStore = request.app.state.store
        url: str = request.app.state.database_url
        try:
            receipt = await asyncio.to_thread(
                privacy.erase, store, url, slug, attendee_id, f"token:{name}", _WAIT_SECONDS
            )
        except StoreUnavailable as error:
            raise Unavailable from error
        return json_response(receipt)

    async def lift(request: Request) -> Response:
        slug: str = request.path_params["event"]
        api.check_event(request, slug)
        attendee_id = _attendee(request)
        url: str = request.app.state.database_url
        try:
            lifted = await asyncio.to_thread(privacy.lift, url, slug, attendee_id)
        except psycopg.OperationalError as error:
            raise Unavailable from error
        return json_response(lifted)

    async def find(request: Request) -> Response:
        email = _email(request)
        url: str = request.app.state.database_url
        found = await asyncio.to_thread(privacy.find, url, keys.active(), email)
        found = [s for s in found if common.grant(request).sees(s.event)]
        return json_response(privacy.Subjects(email_found=bool(found), subjects=found))

    async def export(request: Request) -> Response:
        email = _email(request)
        url: str = request.app.state.database_url
        exported = await asyncio.to_thread(privacy.export, url, keys.active(), email)
        granted = common.grant(request)
        subjects = [s for s in exported.subjects if granted.sees(s.event)]
        return json_response(
            privacy.SubjectExport(generated_at=exported.generated_at, subjects=subjects)
        )

    return [
        api.route("/v1/events/{event}/attendees/{attendee_id}", erase, "admin", "DELETE"),
        api.route("/v1/events/{event}/attendees/{attendee_id}/lift", lift, "admin", "POST"),
        api.route("/v1/subjects", find, "admin"),
        api.route("/v1/subjects/export", export, "admin"),
    ]


def _attendee(request: Request) -> str:
    attendee_id: str = request.path_params["attendee_id"]
    if not attendee_id.strip() or len(attendee_id) > 200 or "\x00" in attendee_id:
        raise ApiError(400, "bad_parameter", "an attendee id is 1 to 200 characters")
    return attendee_id


def _email(request: Request) -> str:
    email = common.text(request.query_params, "email")
    if email is None:
        raise ApiError(400, "bad_parameter", "`email` is required")
    return email


def _bearer(request: Request) -> str:
    return request.headers.get("authorization", "").partition(" ")[2].strip()
