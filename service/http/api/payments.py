"""GET /v1/events/{event}/payments (a page, or every entry as CSV) and …/payments/summary."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from domain.interpret import parse_time
from projections import payments
from service.http.api import asof, common
from service.http.api.common import Api, ApiError
from service.http.api.models import PaymentsPage
from service.http.exports import Table, csv_rows, fetch_on
from service.http.responses import json_response


def routes(api: Api) -> list[Route]:
    return [
        api.event_route("/v1/events/{event}/payments", page),
        api.event_route("/v1/events/{event}/payments/summary", summary),
    ]


async def page(request: Request, slug: str) -> Response:
    params = request.query_params
    currency, method = common.text(params, "currency"), common.text(params, "method")
    table = common.table(request, xlsx=True)
    when = common.time(params, "as_of")
    if when is not None:
        return await _page_as_of(request, slug, currency, method, table, when)
    if table.kind != "json":
        query, args = payments.export(slug, currency, method)
        exports = common.exports(request)
        if table.kind == "csv" and table.dialect == "csv":
            return await exports.stream(query, args, f"payments-{slug}.csv")
        rows = await exports.fetch(query, args, times=table.kind == "xlsx")
        return csv_rows(payments.EXPORT_COLUMNS, rows, f"payments-{slug}", table)
    limit, after = common.limit(params), _after(params)
    items, more = await payments.page(common.pool(request), slug, currency, method, limit, after)
    return _page_answer(slug, items, more)


async def _page_as_of(
    request: Request,
    slug: str,
    currency: str | None,
    method: str | None,
    table: Table,
    when: datetime,
) -> Response:
    """The ledger (a page, or every entry) as the confirmations that had occurred by `when`
    made it."""
    limit, after = common.limit(request.query_params), _after(request.query_params)
    async with asof.payments_as_of(common.pool(request), slug, when) as (conn, source):
        if table.kind != "json":
            query, args = payments.export(slug, currency, method, source)
            rows = await fetch_on(conn, query, args, times=table.kind == "xlsx")
            return csv_rows(payments.EXPORT_COLUMNS, rows, f"payments-{slug}", table)
        items, more = await payments.page(conn, slug, currency, method, limit, after, source)
    return _page_answer(slug, items, more)


def _after(params: Any) -> tuple[datetime, str] | None:
    cursor = common.decode_cursor(params, 2)
    if cursor is None:
        return None
    paid_at = parse_time(cursor[0])
    if paid_at is None:
        raise common.bad_cursor()
    return (paid_at, cursor[1])


def _page_answer(
    slug: str, items: list[payments.Payment], more: tuple[datetime, str] | None
) -> Response:
    next_cursor = common.encode_cursor([more[0].isoformat(), more[1]]) if more else None
    return json_response(PaymentsPage(event=slug, items=items, next_cursor=next_cursor))


async def summary(request: Request, slug: str) -> Response:
    tz = common.zone(request)
    table = common.table(request)
    when = common.time(request.query_params, "as_of")
    try:
        if when is None:
            totals = await payments.summary(common.pool(request), slug, tz.key)
        else:
            async with asof.payments_as_of(common.pool(request), slug, when) as (conn, source):
                totals = await payments.summary(conn, slug, tz.key, source)
    except asyncpg.InvalidParameterValueError:
        # A zone Python's tz database has and PostgreSQL's does not.
        raise ApiError(400, "bad_parameter", f"the database does not know {tz.key!r}") from None
    if table.kind == "json":
        return json_response(totals)
    # One table of three parts: the `totals` column says which (currency, method or day).
    header = ["totals", "day", "currency", "method", "payments", "amount"]
    rows = [
        *(["currency", None, t.currency, None, t.payments, t.amount] for t in totals.by_currency),
        *(["method", None, t.currency, t.method, t.payments, t.amount] for t in totals.by_method),
        *(["day", str(t.day), t.currency, None, t.payments, t.amount] for t in totals.by_day),
    ]
    return csv_rows(header, rows, f"payment-totals-{slug}", table)
