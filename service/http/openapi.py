"""The OpenAPI 3.1 description of every route, served at /openapi.json.

Schemas are generated from the msgspec Structs the routes really answer with, so the document
and the answers cannot drift apart silently; CI checks them against each other with
schemathesis.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from projections.occupancy import Occupancy
from projections.payments import PaymentSummary
from projections.roster import STATUSES
from service.deliveries import OUTCOMES, DeliveryDetail, LogPage
from service.doctor import Diagnosis
from service.http.api import models as m
from service.http.api.common import MAX_LIMIT
from service.http.api.day import Days, Inside, PipelineHealth
from service.http.api.occupancy import BUCKETS
from service.http.intake import IntakeAccepted, IntakeDuplicate, IntakeQuarantined
from service.http.probes import Health, Readiness
from service.http.responses import Error
from service.privacy import Lifted, Receipt, SubjectExport, Subjects

VERSION: Final = "1.0.0"


_MODELS: Final = (
    Receipt,
    Lifted,
    Subjects,
    SubjectExport,
    Error, m.Events, m.RosterPage, m.AttendeeDetail, Occupancy, m.Timeline, m.CheckIns,
    m.PaymentsPage, PaymentSummary, m.Projections, m.RebuildStarted, IntakeAccepted,
    IntakeDuplicate, IntakeQuarantined, Health, Readiness, LogPage, DeliveryDetail, Diagnosis,
    Days, Inside, PipelineHealth,
)  # fmt: skip


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    _, components = msgspec.json.schema_components(
        _MODELS, ref_template="#/components/schemas/{name}"
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rollcall",
            "version": VERSION,
            "description": (
                "Keeps every JTE Panel attendee webhook as an immutable event and serves the "
                "views built from them. Amounts are exact decimals as strings; times are ISO "
                "8601 UTC. /v1 needs a bearer token (read scope; rebuild needs admin)."
            ),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": _paths(),
    }


def _ref(model: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type | dict[str, Any], description: str) -> dict[str, Any]:
    schema = model if isinstance(model, dict) else _ref(model)
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    texts = {
        400: "a parameter is unknown to this route, given twice, or not valid",
        401: "no valid secret, signature or token",
        403: "the token's scope is not enough",
        404: "no such JTE event, attendee or view",
        405: "method not allowed",
        408: "the body did not arrive in time",
        409: "already running",
        413: "the body is over the limit",
        415: "the body is not JSON",
        503: (
            "the database cannot answer now, or (CSV) every export connection is busy "
            "(`too_many_exports`): retry after Retry-After seconds; `unreadable`: a stored view "
            "row needs a rebuild"
        ),
    }
    return {str(status): _json(Error, texts[status]) for status in statuses}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


_EVENT = _path("event", "the JTE event's slug from configuration")
_FORMAT = _query(
    "format",
    {"type": "string", "enum": ["json", "csv"]},
    "csv answers every row as CSV; a text cell beginning with = + - @ tab or CR gets a ' first",
)
_FORMAT_XLSX = _query(
    "format",
    {"type": "string", "enum": ["json", "csv", "xlsx"]},
    "csv or xlsx answer every row (the roster with a `field:<name>` column per form field); a "
    "text cell beginning with = + - @ tab or CR gets a ' first",
)
_DIALECT = _query(
    "dialect",
    {"type": "string", "enum": ["csv", "excel"]},
    "with format=csv: excel gives a UTF-8 BOM, `;` separators and CRLF line ends",
)
_LIMIT = _query(
    "limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, "page size (default 50)"
)
_CURSOR = _query("cursor", {"type": "string"}, "next_cursor from the previous page")
_TIME = {"type": "string", "format": "date-time"}
_TZ = _query(
    "tz",
    {"type": "string"},
    "IANA time zone days and hours are cut in (default: the event's configured one, else UTC)",
)
_AS_OF = _query(
    "as_of",
    _TIME,
    "the answer as the deliveries that had occurred by then made it (occurrence time, else "
    "receipt time)",
)
_API_ERRORS = (400, 401, 403, 404, 503)
_CSV = {"text/csv": {"schema": {"type": "string"}}}
_XLSX = {
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {
        "schema": {"type": "string", "format": "binary"}
    }
}


def _get(
    summary: str,
    parameters: list[dict[str, Any]],
    model: type,
    csv: bool = False,
    xlsx: bool = False,
) -> dict[str, Any]:
    ok = _json(model, "OK")
    if csv:
        ok["content"].update(_CSV)
        parameters = [*parameters, _FORMAT_XLSX if xlsx else _FORMAT, _DIALECT]
    if xlsx:
        ok["content"].update(_XLSX)
    return {
        "get": {
            "summary": summary,
            "security": [{"bearer": []}],
            "parameters": parameters,
            "responses": {"200": ok, **_errors(*_API_ERRORS)},
        }
    }


def _webhook(summary: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    answered = {"oneOf": [_ref(IntakeAccepted), _ref(IntakeDuplicate)]}
    return {
        "post": {
            "summary": summary,
            "parameters": parameters,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {}}},
                "description": "JTE Panel's delivery, verified against the event's secret",
            },
            "responses": {
                "200": _json(answered, "stored (accepted), or seen before (duplicate)"),
                "202": _json(IntakeQuarantined, "verified but not readable: kept for replay"),
                **_errors(400, 401, 404, 408, 413, 415, 503),
            },
        }
    }


def _paths() -> dict[str, Any]:
    roster = [
        _EVENT,
        _query("status", {"type": "string", "enum": list(STATUSES)}, "default: all but deleted"),
        _query("role", {"type": "string"}, "attendee, speaker, organizer"),
        _query("checked_in", {"type": "boolean"}, "inside now"),
        _query("paid", {"type": "boolean"}, "payment confirmed"),
        _query("q", {"type": "string"}, 'part of the name or email ("Anna Nowak" works too)'),
        _LIMIT,
        _CURSOR,
        _AS_OF,
    ]
    paths = {
        "/webhooks/jte": _webhook("A delivery for the default JTE event", []),
        "/webhooks/jte/{event}": _webhook("A delivery for a configured JTE event", [_EVENT]),
        "/healthz": {
            "get": {"summary": "The process is alive", "responses": {"200": _json(Health, "alive")}}
        },
        "/readyz": {
            "get": {
                "summary": (
                    "Ready to take deliveries: the database answers and the event store is in "
                    "place (a failed view is reported by /v1/projections and /metrics, not here)"
                ),
                "responses": {
                    "200": _json(Readiness, "ready"),
                    "503": _json(Readiness, "not ready"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/dashboard": {
            "get": {
                "summary": "The live dashboard (asks for a read token)",
                "responses": {
                    "200": {
                        "description": "HTML page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
        "/v1/events": _get("Configured JTE events with headline numbers", [], m.Events, csv=True),
        "/v1/events/{event}/roster": _get(
            "Current attendees", roster, m.RosterPage, csv=True, xlsx=True
        ),
        "/v1/events/{event}/attendees/{attendee_id}": _get(
            "One attendee, now and the deliveries about them",
            [_EVENT, _path("attendee_id", "the attendee's id in JTE"), _AS_OF],
            m.AttendeeDetail,
        ),
        "/v1/events/{event}/occupancy": _get(
            "Inside now (or at a past instant), peak and when, stays and check-ins",
            [_EVENT, _query("at", _TIME, "a past instant"), _AS_OF],
            Occupancy,
            csv=True,
        ),
        "/v1/events/{event}/occupancy/timeline": _get(
            "Arrivals, departures and inside per bucket",
            [
                _EVENT,
                _query("bucket", {"type": "string", "enum": list(BUCKETS)}, "default 5m"),
                _query(
                    "from",
                    _TIME,
                    "start (default: the first change); a date or a time without offset is "
                    "local time in `tz`",
                ),
                _query("to", _TIME, "end (default: after the last change)"),
                _TZ,
            ],
            m.Timeline,
            csv=True,
        ),
        "/v1/events/{event}/check-ins": _get(
            "The latest check-ins",
            [
                _EVENT,
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "default 20"),
            ],
            m.CheckIns,
            csv=True,
        ),
        "/v1/events/{event}/payments": _get(
            "Ledger entries, one per payment reference",
            [
                _EVENT,
                _query("currency", {"type": "string"}, "e.g. PLN"),
                _query("method", {"type": "string"}, "payu, przelewy24, tpay, bank_transfer"),
                _LIMIT,
                _CURSOR,
                _AS_OF,
            ],
            m.PaymentsPage,
            csv=True,
            xlsx=True,
        ),
        "/v1/events/{event}/payments/summary": _get(
            "Totals by currency, method and local day",
            [_EVENT, _TZ, _AS_OF],
            PaymentSummary,
            csv=True,
        ),
        "/v1/projections": _get("Where each view stands", [], m.Projections),
        "/v1/deliveries": _get(
            "The delivery log: stored deliveries, duplicates and refused requests, newest first "
            "(admin). Refusals keep metadata only: header names, never values",
            [
                _query("event", {"type": "string"}, "a JTE event's slug (`other`: none)"),
                _query("outcome", {"type": "string", "enum": list(OUTCOMES)}, "one outcome"),
                _query("from", _TIME, "received at or after"),
                _query("to", _TIME, "received before"),
                _query("attendee", {"type": "string"}, "an attendee's id in JTE"),
                _LIMIT,
                _CURSOR,
            ],
            LogPage,
        ),
        "/v1/deliveries/{key}": _get(
            "One stored delivery: kept headers, body, interpretation, which views applied it",
            [_path("key", "the delivery's key (`key` in the log)")],
            DeliveryDetail,
        ),
        "/v1/events/{event}/days": _get(
            "Days with arrivals or departures, newest first, in a time zone",
            [_EVENT, _query("tz", {"type": "string"}, "an IANA time zone (default UTC)")],
            Days,
        ),
        "/v1/events/{event}/inside": _get(
            "Inside now by when the stay began: since `since`, or earlier (never checked out)",
            [_EVENT, {**_query("since", _TIME, "the day's start"), "required": True}],
            Inside,
        ),
        "/v1/health": _get(
            "The pipeline at a glance: last delivery, refusals and quarantines in the last "
            "hour, views' lag, stale",
            [],
            PipelineHealth,
        ),
        "/v1/doctor": _get(
            "What recent refusals say JTE sends, and a configuration that would accept it (admin)",
            [
                _query(
                    "hours",
                    {"type": "number", "exclusiveMinimum": 0, "maximum": 168},
                    "how far back to look (default 24)",
                )
            ],
            Diagnosis,
        ),
        "/v1/projections/{name}/rebuild": {
            "post": {
                "summary": "Rebuild a view (or all) in the background, then swap it in (admin)",
                "security": [{"bearer": []}],
                "parameters": [
                    _path(
                        "name", "roster, occupancy, payments, occurrences, roster_history or all"
                    ),
                    _query(
                        "skip_poison",
                        {"type": "boolean", "default": False},
                        "dead-letter events a view cannot apply instead of stopping the build",
                    ),
                ],
                "responses": {
                    "202": _json(m.RebuildStarted, "started"),
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            }
        },
    }
    paths["/v1/events/{event}/attendees/{attendee_id}"]["delete"] = {
        "summary": (
            "Erase an attendee's personal data for good (admin): destroys their data key, "
            "scrubs the views, records the erasure; answers a receipt"
        ),
        "security": [{"bearer": []}],
        "parameters": [_EVENT, _path("attendee_id", "the attendee's id in JTE")],
        "responses": {"200": _json(Receipt, "erased"), **_errors(400, 401, 403, 404, 503)},
    }
    paths["/v1/events/{event}/attendees/{attendee_id}/lift"] = {
        "post": {
            "summary": (
                "Lift the block an erasure left on an attendee (admin): what JTE sends about "
                "them from now on is kept again, under a new data key; what was erased stays "
                "erased. `status` is `lifted`, or `not_erased` if there was no block"
            ),
            "security": [{"bearer": []}],
            "parameters": [_EVENT, _path("attendee_id", "the attendee's id in JTE")],
            "responses": {"200": _json(Lifted, "lifted"), **_errors(400, 401, 403, 404, 503)},
        }
    }
    email = _query("email", {"type": "string"}, "the person's email address (required)")
    paths["/v1/subjects"] = _get(
        "Which attendees, in which JTE events, carried this email (admin)",
        [email],
        Subjects,
    )
    paths["/v1/subjects/export"] = _get(
        "Everything held about the person with this email: deliveries and view rows (admin)",
        [email],
        SubjectExport,
    )
    return paths
